"""The inventory's ``provision:`` settings on sites and nodes: loaded, validated, located."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridctl.inventory.load import load_inventory

PHL = "sites/phl-co-12.yaml"

SITE_BLOCK = """provision:
  profile: vllm
  owner: root:root
  vars:
    model: meta-llama/Llama-3.1-8B-Instruct
    extra_args: [--enable-prefix-caching, --max-num-seqs, 64]
    gpu_memory_utilization: 0.85
"""
NODE_BLOCK = """    provision:
      prefix: /srv/grid/
      vars: {tensor_parallel_size: 2}
"""


def _add(inv: Path, site_block: str = SITE_BLOCK, node_block: str = NODE_BLOCK) -> Path:
    path = inv / PHL
    text = path.read_text()
    first_gpus = text.index("    gpus:", text.index("nodes:"))
    end = text.index("\n", first_gpus) + 1
    path.write_text(site_block + text[:end] + node_block + text[end:])
    return path


def test_site_and_node_settings_load(inv: Path) -> None:
    _add(inv)
    site = load_inventory(inv).site("phl-co-12")
    assert site is not None
    assert (site.provision.profile, site.provision.owner, site.provision.prefix) == (
        "vllm",
        "root:root",
        None,
    )
    assert site.provision.vars == {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "extra_args": ["--enable-prefix-caching", "--max-num-seqs", 64],
        "gpu_memory_utilization": 0.85,
    }
    node = site.nodes[0]
    assert node.provision is not None and node.provision.prefix == "/srv/grid"  # trailing / dropped
    assert node.provision.vars == {"tensor_parallel_size": 2} and site.nodes[1].provision is None


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("provision:\n  profile: Bad Name\n", "provision.profile: must be a profile name"),
        ("provision:\n  prefix: relative/dir\n", "provision.prefix: must be an absolute directory"),
        ("provision:\n  prefix: /srv/../etc\n", "provision.prefix: must not contain '.' or '..' components"),
        ("provision:\n  owner: 'root;rm'\n", "provision.owner: must be an owner as user or user:group"),
        ("provision:\n  vars: {Model: x}\n", "provision.vars.Model: must be a variable name"),
        ("provision:\n  vars: {node: x}\n", "provision.vars.node: 'node' is set by gridctl"),
        ("provision:\n  vars: {env: {a: 1}}\n", "provision.vars.env: must be text, a number, true/false"),
        ("provision:\n  profil: vllm\n", "provision.profil: unknown key; did you mean 'profile'?"),
    ],
)
def test_bad_settings_are_located(cli, inv: Path, block: str, expected: str) -> None:
    _add(inv, site_block=block, node_block="")
    r = cli("inventory", "validate")
    assert r.rc == 5, r
    line = r.err.splitlines()[0]
    assert line.startswith(f"{PHL}:") and expected in line, r.err


def test_node_settings_are_validated_too(cli, inv: Path) -> None:
    _add(inv, site_block="", node_block="    provision: {prefix: nope}\n")
    r = cli("inventory", "validate")
    assert r.rc == 5 and "nodes[0].provision.prefix: must be an absolute directory" in r.err, r
