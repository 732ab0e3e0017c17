"""The lab's pure parts: GPU table, timing model, prefix cache, request parsing, inventories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gridctl.core.placement.latency import estimate_rtt_ms
from gridctl.core.placement.perf import (
    DEFAULT_GPU,
    build_serving,
    choose_site_gpu,
    count_tokens,
    gpu_perf,
    model_factor,
    token_interval_ms,
    ttft_ms,
)
from gridctl.core.placement.prefix import PrefixCache, text_chain
from gridctl.inventory.load import load_inventory
from gridctl.lab.formats import BadRequest, StreamFormat, filler_tokens, parse_completion
from gridctl.lab.gpu import BLOCK_CHARS, BLOCK_TOKENS
from gridctl.lab.overlay import build_synthetic_sites, rewrite_site_text, write_synthetic_inventory
from gridctl.lab.site import build_site_specs
from tests.conftest import EXAMPLE


@pytest.mark.parametrize(
    ("name", "row"),
    [
        ("H100", "H100"), ("NVIDIA H100 80GB HBM3", "H100"), ("h200", "H200"), ("H100-SXM", "H100"),
        ("A100 80GB", "A100"), ("L40S", "L40S"), ("L4", "L4"), ("NVIDIA L4", "L4"), ("L40", "default"),
        ("RTX PRO 6000", "RTX PRO 6000"), ("NVIDIA RTX PRO 6000 Blackwell", "RTX PRO 6000"),
        ("B200", "default"), ("", "default"),
    ],
)  # fmt: skip
def test_gpu_table_lookup(name: str, row: str) -> None:
    assert gpu_perf(name).name == row


def test_faster_gpus_give_faster_sites() -> None:
    order = [gpu_perf(g) for g in ("H200", "H100", "L40S", "L4")]
    ttfts = [ttft_ms(g, 1000, 0, 1, 8) for g in order]
    intervals = [token_interval_ms(g, 1, 8) for g in order]
    assert ttfts == sorted(ttfts) and intervals == sorted(intervals)


def test_site_gpu_is_the_most_numerous_model() -> None:
    perf, count = choose_site_gpu([("L4", 2), ("H100", 8), ("L4", 2)])
    assert (perf.name, count) == ("H100", 12)
    assert choose_site_gpu([]) == (DEFAULT_GPU, 1)


def test_timing_formula() -> None:
    h100 = gpu_perf("H100")
    assert ttft_ms(h100, 2500, 0, 0, 10) == pytest.approx(25 + 100)
    assert ttft_ms(h100, 2500, 2000, 0, 10) == pytest.approx(25 + 20)  # cached tokens are not prefilled
    assert ttft_ms(h100, 2500, 0, 10, 10) == pytest.approx(2 * 125)  # a full site: twice as long
    assert token_interval_ms(h100, 0, 10) == pytest.approx(1000 / 150)
    assert token_interval_ms(h100, 5, 10) == pytest.approx(1.5 * 1000 / 150)
    assert model_factor("llama-3.1-70b-instruct") == pytest.approx((70 / 8) ** 0.5)
    assert model_factor("llama-3.1-8b-instruct") == model_factor("parakeet-tdt-0.6b-v2") == 1.0


def test_tokens_and_filler() -> None:
    assert count_tokens("") == 1 and count_tokens("abcd") == 1 and count_tokens("abcde") == 2
    assert filler_tokens("p", 5) == filler_tokens("p", 5)
    assert len(filler_tokens("p", 300)) == 300 and all(t for t in filler_tokens("p", 300))


def test_prefix_cache_counts_leading_blocks_and_evicts_lru() -> None:
    a, b, c = "a" * BLOCK_CHARS, "b" * BLOCK_CHARS, "c" * BLOCK_CHARS
    cache = PrefixCache(capacity_tokens=4 * BLOCK_TOKENS)

    def lookup(text: str) -> int:  # what a lab site does on admission
        return cache.lookup(text_chain(text, BLOCK_CHARS, BLOCK_TOKENS))

    assert lookup(a + b + "tail") == 0
    assert lookup(a + b + c) == 2 * BLOCK_TOKENS  # the shared prefix
    assert lookup(b + a) == 0  # same blocks, different prefix: chained hashes differ
    assert len(cache) == 4 and cache.used == 4 * BLOCK_TOKENS
    assert lookup(a) == 0  # a's block was the least recently used and got evicted
    assert lookup("short") == 0 and len(cache) == 4  # partial blocks are not cached


def test_parse_completion() -> None:
    chat = parse_completion(
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, True
    )
    assert chat.prompt == "user: hi\n" and chat.max_tokens == 16 and chat.finish_reason == "stop"
    comp = parse_completion({"model": "m", "prompt": [1, 2, 3], "max_tokens": 2}, False)
    assert (comp.prompt_tokens, comp.max_tokens, comp.finish_reason) == (3, 2, "length")
    assert (
        parse_completion(
            {"model": "m", "messages": [{"role": "u"}], "max_completion_tokens": 3}, True
        ).max_tokens
        == 3
    )
    for body, param in [([], None), ({"model": 1}, "model"), ({"model": "m", "prompt": ["a", "b"]}, "prompt"),
                        ({"model": "m", "prompt": "x", "max_tokens": True}, "max_tokens")]:  # fmt: skip
        with pytest.raises(BadRequest) as err:
            parse_completion(body, False)
        assert err.value.param == param


def test_stream_chunks_are_valid_json_with_escaping() -> None:
    req = parse_completion({"model": 'we"ird', "messages": [{"role": "user", "content": "x"}]}, True)
    fmt = StreamFormat(req, "id-1", 7)
    for chunk in (fmt.role(), fmt.token('a "quoted"\n token'), fmt.final(), fmt.usage(3, 1)):
        text = chunk.decode()
        assert text.startswith("data: ") and text.endswith("\n\n")
        assert json.loads(text[6:])["model"] == 'we"ird'
    assert json.loads(fmt.token('a "q"').decode()[6:])["choices"][0]["delta"]["content"] == 'a "q"'


def test_specs_follow_the_inventory() -> None:
    inv = load_inventory(EXAMPLE)
    specs = {s.name: s for s in build_site_specs(inv, port_base=20000)}
    assert [s.port for s in specs.values()] == list(range(20000, 20000 + len(inv.sites)))
    fra = specs["fra-pop-01"]
    assert fra.default_region == "us-east"  # the first region of grid.yaml
    assert fra.rtt_ms["eu-de"] == 1.1  # measured, in grid.yaml
    site, region = inv.site("fra-pop-01"), inv.region("eu-fr")
    assert site is not None and region is not None
    assert fra.rtt_ms["eu-fr"] == round(estimate_rtt_ms(region.location, site.location, site.kind), 3)
    assert {m.model: m.capacity for m in fra.models} == {m.name: m.capacity for m in site.models}
    assert all(m.gpu.name == "H100" for m in fra.models)
    # each model as placement sees it: the same Serving (GPUs, tensor parallel, replicas)
    for spec in specs.values():
        s = inv.site(spec.name)
        assert s is not None
        assert spec.models == tuple(build_serving(s, m.name, inv.grid.gpus) for m in s.models)
    jc = {m.model: m for m in specs["jc-edge-01"].models}["llama-3.1-8b-instruct"]
    assert (jc.gpu.name, jc.gpus, jc.tensor_parallel, jc.replicas, jc.replica_slots()) == (
        "L4",
        2,
        1,
        2,
        [8, 8],
    )
    nwk = {m.model: m.gpu.name for m in specs["nwk-co-03"].models}  # a mixed site: models[].gpu
    assert nwk == {"llama-3.1-8b-instruct": "RTX PRO 6000", "parakeet-tdt-0.6b-v2": "L40S"}
    assert build_site_specs(inv, "eu-de")[0].default_region == "eu-de"


def test_rewrite_keeps_comments_and_drops_the_key_env() -> None:
    text = "# top\nname: s\nendpoint: https://s.example.net  # prod\napi_key_env: KEY_S\nkind: edge\n"
    assert (
        rewrite_site_text(text, "http://127.0.0.1:9")
        == "# top\nname: s\nendpoint: http://127.0.0.1:9  # prod\nkind: edge\n"
    )
    flow = "{name: s, endpoint: 'https://s.example.net', api_key_env: K}\n"
    out = rewrite_site_text(flow, "http://127.0.0.1:9")
    assert "127.0.0.1:9" in out and "api_key_env" not in out


def test_synthetic_sites_are_deterministic_and_valid(tmp_path: Path) -> None:
    inv = load_inventory(EXAMPLE)
    assert build_synthetic_sites(inv.grid.regions, 30) == build_synthetic_sites(inv.grid.regions, 30)
    syn = load_inventory(write_synthetic_inventory(inv, tmp_path / "syn", 30))
    assert len(syn.sites) == 30
    assert {s.region for s in syn.sites} == {r.name for r in inv.grid.regions}
    assert len({s.kind for s in syn.sites}) == 4
    assert all(s.models[0].name == "llama-3.1-8b-instruct" for s in syn.sites)
    for s in syn.sites:  # each site's jurisdiction is its region's
        region = syn.region(s.region)
        assert region is not None and s.jurisdiction == region.jurisdiction


def test_the_overlay_copy_skips_what_would_block_it(tmp_path: Path) -> None:
    """A FIFO or a link to a device beside the inventory's files would hang the copy `lab up`
    makes; they are left out, the inventory's own files copied."""
    import os
    import shutil

    from gridctl.inventory.load import load_inventory
    from gridctl.lab.overlay import write_overlay
    from tests.conftest import EXAMPLE

    src = tmp_path / "inv"
    shutil.copytree(EXAMPLE, src)
    os.mkfifo(src / "notes.fifo")
    (src / "zero").symlink_to("/dev/zero")
    (src / "gone").symlink_to(tmp_path / "nothing-here")
    inv = load_inventory(src)
    dest = write_overlay(
        inv, tmp_path / "overlay", {s.name: f"http://127.0.0.1:{9000 + i}" for i, s in enumerate(inv.sites)}
    )
    assert (dest / "grid.yaml").exists() and len(list((dest / "sites").glob("*.yaml"))) == len(inv.sites)
    assert not any((dest / n).exists() or (dest / n).is_symlink() for n in ("notes.fifo", "zero", "gone"))
