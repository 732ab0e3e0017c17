"""Rendering the built-in profiles, locating template errors, and the pure plan."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gridctl.core.health import GpuReading, NodeProbe
from gridctl.core.inventory.model import Gpus, Provision, Site
from gridctl.inventory.load import load_inventory
from gridctl.provision.context import build_context, build_settings, endpoint_port
from gridctl.provision.facts import Facts, RemoteFile
from gridctl.provision.plan import build_plan, check_preflight
from gridctl.provision.profile import ProfileError, load_profile, parse_profile
from gridctl.provision.render import NodeRender, Renderer, RenderFailed, env_value, quote_systemd
from tests.conftest import EXAMPLE, REPO

TEMPLATES = REPO / "templates"


@pytest.fixture(scope="module")
def phl() -> Site:
    site = load_inventory(EXAMPLE).site("phl-co-12")
    assert site is not None and site.nodes[0].gpus == Gpus("L40S", 4)
    return site


def render(
    site: Site, profile: str, templates: Path = TEMPLATES, node_vars: dict | None = None, **site_vars: Any
) -> NodeRender:
    site = replace(site, provision=Provision(profile=profile, vars=site_vars))
    node = site.nodes[0]
    if node_vars is not None:
        node = replace(node, provision=Provision(prefix="/srv/grid", vars=node_vars))
        site = replace(site, nodes=(node, *site.nodes[1:]))
    prof = load_profile(templates, profile, "templates")
    ctx = build_context("acme", site, node, build_settings(site, node), prof.defaults)
    return Renderer(prof).render_node(node, ctx, site.api_key_env)


def text(r: NodeRender, suffix: str) -> str:
    return next(f.content.decode() for f in r.files if f.dest.endswith(suffix))


def test_vllm_takes_model_port_and_tensor_parallel_size_from_the_inventory(phl: Site) -> None:
    r = render(phl, "vllm", model="meta-llama/Llama-3.1-8B-Instruct", extra_args=["--enable-prefix-caching"])
    env, unit = text(r, ".env"), text(r, ".service")
    assert "GRIDCTL_MODEL=meta-llama/Llama-3.1-8B-Instruct\n" in env
    # 4x L40S on the node, the 8B model on one GPU each (tensor_parallel: 1): 4 replicas
    assert "GRIDCTL_TENSOR_PARALLEL_SIZE=1\n" in env and "GRIDCTL_DATA_PARALLEL_SIZE=4\n" in env
    assert "--data-parallel-size ${GRIDCTL_DATA_PARALLEL_SIZE}" in unit
    assert "GRIDCTL_PUBLISH=0.0.0.0:443:8000\n" in env  # https endpoint without a port
    assert "GRIDCTL_SERVED_MODEL_NAME=llama-3.1-8b-instruct\n" in env  # the site's first model
    assert "--gpus all" in unit and "--enable-prefix-caching" in unit
    assert "EnvironmentFile=/etc/gridctl/gridctl-vllm.env" in unit
    assert r.reload == ("systemctl daemon-reload",)
    assert r.restart[-1] == "systemctl restart gridctl-vllm.service"
    assert r.requires.gpus == Gpus("L40S", 4) and r.requires.files == ("/etc/gridctl/secrets/hf.env",)
    assert r.verify.models == ("llama-3.1-8b-instruct",) and r.verify.timeout == 900


def test_nim_with_podman_uses_cdi_and_keeps_the_key_out(phl: Site) -> None:
    r = render(phl, "nim", image="nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3", runtime="podman")
    unit, env = text(r, ".service"), text(r, ".env")
    assert "/usr/bin/podman run" in unit and "--device nvidia.com/gpu=all" in unit and "--gpus" not in unit
    assert "--env-file /etc/gridctl/secrets/ngc.env" in unit and "NGC_API_KEY" not in unit + env
    assert "NIM_TENSOR_PARALLEL_SIZE=1\n" in env
    assert r.requires.commands == ("podman", "systemctl") and r.verify.health_path == "/v1/health/ready"


def test_tensor_parallel_defaults_to_the_nodes_gpu_count(phl: Site) -> None:
    import dataclasses

    models = tuple(dataclasses.replace(m, tensor_parallel=None) for m in phl.models)
    r = render(dataclasses.replace(phl, models=models), "vllm", model="m")
    env = text(r, ".env")
    assert "GRIDCTL_TENSOR_PARALLEL_SIZE=4\n" in env and "GRIDCTL_DATA_PARALLEL_SIZE=1\n" in env


def test_node_vars_and_prefix_override_the_site(phl: Site) -> None:
    r = render(phl, "vllm", node_vars={"model": "m/node", "tensor_parallel_size": 2}, model="m/site")
    env = text(r, ".env")
    assert "GRIDCTL_MODEL=m/node\n" in env and "GRIDCTL_TENSOR_PARALLEL_SIZE=2\n" in env
    assert all(f.dest.startswith("/srv/grid/etc/") for f in r.files)
    assert "EnvironmentFile=/srv/grid/etc/gridctl/gridctl-vllm.env" in text(r, ".service")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("profile", ["vllm", "nim"])
@pytest.mark.parametrize("runtime", ["docker", "podman"])
def test_rendered_units_pass_systemd_analyze(phl: Site, profile: str, runtime: str, tmp_path: Path) -> None:
    r = render(phl, profile, model="m/x", image="nvcr.io/nim/x:1", runtime=runtime, runtime_path="/bin/sh")
    unit = tmp_path / f"gridctl-{profile}.service"
    unit.write_text(text(r, ".service"))
    res = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    # this machine has no docker.service to depend on; anything else is a real complaint
    complaints = [
        ln
        for ln in res.stderr.splitlines()
        if (str(unit) in ln or "gridctl-" in ln) and "Unit docker.service not found" not in ln
    ]
    assert not complaints, res.stderr


def test_undefined_variable_is_located_in_its_template(phl: Site) -> None:
    with pytest.raises(RenderFailed) as exc:
        render(phl, "vllm")
    assert str(exc.value.problem).startswith("templates/provision/vllm/vllm.env.j2:4: 'model' is undefined")


def test_errors_in_the_manifest_strings_point_at_its_line(phl: Site, tmp_path: Path) -> None:
    shutil.copytree(TEMPLATES / "provision" / "lab", tmp_path / "provision" / "lab")
    manifest = tmp_path / "provision" / "lab" / "profile.yaml"
    text_ = manifest.read_text()
    manifest.write_text(text_.replace('"etc/gridctl-lab/{{ site.name }}.env"', '"etc/{{ nope }}.env"'))
    line = manifest.read_text().splitlines().index('    dest: "etc/{{ nope }}.env"') + 1
    with pytest.raises(RenderFailed) as exc:
        render(phl, "lab", tmp_path)
    assert str(exc.value.problem).startswith(
        f"templates/provision/lab/profile.yaml:{line}: files[2].dest: 'nope' is"
    )
    manifest.write_text(text_.replace('"etc/gridctl-lab/{{ site.name }}.env"', '"../../etc/passwd"'))
    with pytest.raises(RenderFailed, match=r"must be a relative path without '\.\.'"):
        render(phl, "lab", tmp_path)


def test_manifest_problems_are_all_listed_with_lines(tmp_path: Path) -> None:
    (tmp_path / "a.j2").write_text("x\n")
    manifest = (
        "files:\n  - src: a.j2\n    dest: a\n    mode: 644x\n  - src: missing.j2\n    dest: b\nbogus: 1\n"
    )
    with pytest.raises(ProfileError) as exc:
        parse_profile(manifest, "p", tmp_path, "templates/provision/p")
    assert exc.value.problems == [
        'templates/provision/p/profile.yaml:4: files[0].mode: must be an octal mode such as "0644" '
        "(got '644x'); quote it",
        "templates/provision/p/profile.yaml:5: files[1].src: "
        "template missing.j2 not found in the profile directory",
        "templates/provision/p/profile.yaml:7: bogus: unknown key; expected one of: defaults, description, "
        "diagnose, files, reload, requires, restart, stop, verify",
    ]


def test_filters_quote_for_systemd_and_env_files() -> None:
    assert quote_systemd("/usr/bin/docker") == "/usr/bin/docker"
    assert quote_systemd("a b") == '"a b"'
    assert quote_systemd('50% "$HOME"') == '"50%% \\"$$HOME\\""'
    assert env_value("meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B"
    with pytest.raises(ValueError, match="one plain line"):
        env_value("a\nEVIL=1")


def test_endpoint_port_and_settings(phl: Site) -> None:
    assert endpoint_port("https://x.example.net") == 443
    assert endpoint_port("http://127.0.0.1:8000/v1") == 8000
    site = replace(phl, provision=Provision(profile="vllm", prefix="/a", vars={"x": 1, "y": 2}))
    node = replace(phl.nodes[0], provision=Provision(prefix="/b", vars={"y": 3}))
    s = build_settings(site, node)
    assert (s.profile, s.prefix, s.vars) == ("vllm", "/b", {"x": 1, "y": 3})
    assert build_settings(phl, phl.nodes[0]).prefix == "/"


# ---------------------------------------------------------------- plan and preflight


def _facts(r: NodeRender, sums: list[RemoteFile], **kw: Any) -> Facts:
    base: dict[str, Any] = {
        "probe": None,
        "free_kb": 10**9,
        "commands": {
            c: True for c in ("sha256sum", "base64", "stat", "mv", "cp", "mkdir", "docker", "systemctl")
        },
        "files": {f: True for f in r.requires.files},
        "sums": tuple(sums),
        "complete": True,
    }
    return Facts(**(base | kw))


def test_plan_compares_content_mode_and_owner(phl: Site) -> None:
    r = render(phl, "vllm", model="m/x")
    env, unit = r.files
    same_env = RemoteFile(True, env.mode, "root", "root", env.sha256)
    plan = build_plan(r, [same_env, RemoteFile(False)])
    assert [c.action for c in plan.changes] == ["unchanged", "create"]
    assert plan.commands == (*r.reload, *r.restart)  # the unit notifies reload and restart
    plan = build_plan(
        r,
        [
            RemoteFile(True, 0o600, "root", "root", env.sha256),
            RemoteFile(True, unit.mode, "root", "root", unit.sha256),
        ],
    )
    assert [c.reasons for c in plan.changes] == [("mode 0600 -> 0644",), ()]
    assert plan.commands == r.restart  # the env file notifies restart only
    assert build_plan(r, [same_env, RemoteFile(True, unit.mode, "root", "root", unit.sha256)]).commands == ()
    owned = replace(r, owner="vllm:docker")
    assert build_plan(owned, [same_env, RemoteFile(False)]).changes[0].reasons == (
        "owner root:root -> vllm:docker",
    )


def _gpus(n: int, name: str = "NVIDIA L40S", driver: str = "550.54.15") -> NodeProbe:
    return NodeProbe(
        gpus=tuple(GpuReading(index=i, name=name, uuid=f"GPU-{i}", driver_version=driver) for i in range(n))
    )


@pytest.mark.parametrize(
    ("kw", "vars_", "expected"),
    [
        ({"probe": _gpus(4)}, {}, []),
        ({"probe": _gpus(3)}, {}, ["gpus: 3 found, the inventory says 4"]),
        (
            {"probe": _gpus(4, "NVIDIA H100 80GB HBM3")},
            {},
            ["gpus: model NVIDIA H100 80GB HBM3, the inventory says L40S"],
        ),
        (
            {"probe": NodeProbe(smi_error="NVIDIA driver not loaded: x")},
            {},
            ["gpus: NVIDIA driver not loaded: x"],
        ),
        (
            {"probe": _gpus(4, driver="535.1")},
            {"min_driver": "550"},
            ["driver: 535.1 is older than the 550 the profile needs"],
        ),
        ({"probe": _gpus(4), "free_kb": 1024}, {}, ["disk: 1 MiB free under /, the profile needs 20000 MiB"]),
        (
            {"probe": _gpus(4), "commands": {"docker": False}},
            {},
            ["commands: not found on the node: sha256sum, base64, stat, mv, cp, mkdir, docker, systemctl"],
        ),
        (
            {"probe": _gpus(4), "files": {}},
            {},
            ["files: missing on the node: /etc/gridctl/secrets/hf.env (put them there first)"],
        ),
    ],
)
def test_preflight_says_which_check_failed_and_why(
    phl: Site, kw: dict, vars_: dict, expected: list[str]
) -> None:
    r = render(phl, "vllm", model="m/x", **vars_)
    assert check_preflight(r, _facts(r, [RemoteFile(False)] * 2, **kw)) == expected


def test_lab_profile_needs_no_gpu_checks(phl: Site) -> None:
    r = render(phl, "lab")
    assert r.requires.gpus is None
    facts = _facts(
        r,
        [RemoteFile(False)] * 2,
        commands={
            c: True
            for c in ("sha256sum", "base64", "stat", "mv", "cp", "mkdir", "python3", "setsid", "nohup")
        },
    )
    assert check_preflight(r, facts) == []
