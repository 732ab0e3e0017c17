"""`gridctl inventory validate`: every class of problem, located as file:line: path: message.

Each CLI test edits one file of a scratch copy of the example inventory with a
small text substitution (so the line of the problem is known), runs the real
entry point in a subprocess, and checks the exit code (5), the exact problem
lines on stderr, the `error:` count line and the `hint:` line, and that no
traceback leaks. The pure parts (yamldoc, build_site, build_grid) get
table-driven unit tests below.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from gridctl.core.inventory.model import SshDefaults
from gridctl.core.inventory.schema import build_grid
from gridctl.core.inventory.site_schema import build_site
from gridctl.core.inventory.yamldoc import DocumentError, parse_document, path_str

PHL = "sites/phl-co-12.yaml"
POP = "sites/phl-pop-01.yaml"
GRID = "grid.yaml"
DNS = "must be a DNS label: lowercase letters, digits and '-', at most 63 characters"
ISO = "must be an ISO 3166-1 alpha-2 country code such as US or DE"
BOOL_HINT = '; YAML reads yes/no/on/off (and NO, Norway) as booleans: quote it, e.g. "NO"'
ERROR_LINE = re.compile(r"^error: inventory .+ is invalid \((\d+) problems?\)$")


# ---------------------------------------------------------------- helpers


def edit(inv: Path, rel: str, old: str, new: str) -> int:
    """Replace the one occurrence of ``old`` in ``rel``; return the line where ``new`` starts."""
    path = inv / rel
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur exactly once in {rel}"
    at = text.index(old)
    path.write_text(text[:at] + new + text[at + len(old) :])
    return text.count("\n", 0, at) + 1


def line_in(inv: Path, rel: str, needle: str) -> int:
    """The 1-based line of the one occurrence of ``needle`` in ``rel``."""
    text = (inv / rel).read_text()
    assert text.count(needle) == 1, f"{needle!r} must occur exactly once in {rel}"
    return text.count("\n", 0, text.index(needle)) + 1


def problems_of(res: Any) -> list[str]:
    """Check the shape of a failed validate; return its problem lines."""
    assert res.rc == 5, res
    assert "Traceback" not in res.err and "unexpected" not in res.err, res
    assert res.out == "", res
    lines = res.err.splitlines()
    assert len(lines) >= 3, res
    assert lines[-1] == "hint: fix the lines above, then run `gridctl inventory validate`", res
    m = ERROR_LINE.match(lines[-2])
    assert m, res
    problems = lines[:-2]
    assert int(m.group(1)) == len(problems), res
    for p in problems:
        assert re.match(r"^(grid\.yaml|sites/[^:]+\.ya?ml)(:\d+)?: ", p), p
    return problems


def invalid(cli: Any, *expected: str) -> list[str]:
    """Run validate; the problems must be exactly ``expected`` (in the order given)."""
    problems = problems_of(cli("inventory", "validate"))
    assert problems == list(expected)
    return problems


# ---------------------------------------------------------------- valid inventory


def test_valid_inventory_prints_summary_and_nothing_on_stderr(cli):
    res = cli("inventory", "validate")
    assert res.rc == 0, res
    assert res.err == ""
    assert re.fullmatch(r"inventory .+ is valid: grid acme-grid, 6 regions, 15 sites, 24 nodes\n", res.out), (
        res
    )


def test_valid_inventory_json(cli):
    res = cli("inventory", "validate", "-o", "json")
    assert res.rc == 0, res
    assert res.err == ""
    assert json.loads(res.out) == {
        "valid": True,
        "problems": [],
        "warnings": [],
        "sites": 15,
        "nodes": 24,
        "regions": 6,
    }


# ---------------------------------------------------------------- how models are served (issue 11)


def test_serving_gpu_must_be_one_of_the_sites(cli, inv):
    line = edit(inv, POP, "    tensor_parallel: 4\n", "    tensor_parallel: 4\n    gpu: L4\n")
    invalid(cli, f"{POP}:{line + 1}: models[1].gpu: no node of this site has L4 GPUs (its GPUs: H100)")


def test_tensor_parallel_must_fit_on_a_node(cli, inv):
    line = edit(inv, POP, "    tensor_parallel: 4\n", "    tensor_parallel: 16\n")
    invalid(cli, f"{POP}:{line}: models[1].tensor_parallel: 16 GPUs per replica, but no node has more than 8")


def test_gpu_rows_are_checked(cli, inv):
    line = edit(inv, GRID, "decode_tok_s: 260", "decode_tok_s: fast")
    [problem] = problems_of(cli("inventory", "validate"))
    assert problem.startswith(f"{GRID}:{line}: gpus[0].decode_tok_s: must be tokens per second")


def test_an_unknown_gpu_is_a_warning_naming_the_default(cli, inv):
    edit(
        inv,
        PHL,
        "model: L40S, count: 4}\n  - name: phl-co-12-gpu-02",
        "model: MI300X, count: 4}\n  - name: phl-co-12-gpu-02",
    )
    res = cli("inventory", "validate", "-o", "json")
    assert res.rc == 0, res
    [warning] = json.loads(res.out)["warnings"]
    assert "sites/phl-co-12.yaml: nodes[0].gpus.model: no GPU row names 'MI300X'" in warning
    assert "default row (TTFT 60 ms" in warning
    assert "warning: sites/phl-co-12.yaml" in res.err


def test_score_weights_are_a_warning(cli, inv):
    edit(inv, GRID, "  slo_ms: 500 ", "  weights: {latency: 1}\n  slo_ms: 500 ")
    res = cli("inventory", "validate")
    assert res.rc == 0, res
    assert "warning: grid.yaml: defaults.weights: no longer used" in res.err


def test_invalid_inventory_json(cli, inv):
    line = edit(inv, PHL, "drain: false", "drain: maybe")
    res = cli("inventory", "validate", "-o", "json")
    assert res.rc == 5, res
    assert "Traceback" not in res.err
    assert json.loads(res.out) == {
        "valid": False,
        "problems": [
            {
                "file": PHL,
                "line": line,
                "path": "drain",
                "message": "must be true or false (got 'maybe')",
            }
        ],
    }
    # the human lines still go to stderr, so a runbook's log shows them
    assert f"{PHL}:{line}: drain: must be true or false (got 'maybe')" in res.err
    assert ERROR_LINE.match(res.err.splitlines()[-2])


# ---------------------------------------------------------------- YAML syntax


@pytest.mark.parametrize(
    ("old", "new", "offset", "message"),
    [
        # the parser notices the unclosed bracket on the line after it
        (
            "labels:\n",
            "labels: [metro, acme\n",
            1,
            "invalid YAML: did not find expected ',' or ']'",
        ),
        (
            "  operator: acme\n",
            "   operator: acme\n",
            0,
            "invalid YAML: mapping values are not allowed in this context",
        ),
        (
            "kind: central-office\n",
            "kind: central-office\nkind: edge\n",
            1,
            "duplicate key 'kind' (the later value would silently win); keep one",
        ),
    ],
    ids=["unclosed-bracket", "bad-indentation", "duplicate-key"],
)
def test_malformed_yaml_is_located(cli, inv, old, new, offset, message):
    line = edit(inv, PHL, old, new) + offset
    invalid(cli, f"{PHL}:{line}: {message}")


def test_control_character_is_one_line_with_its_line_number(cli, inv):
    line = edit(inv, PHL, "drain: false", "drain: \x07false")
    invalid(
        cli,
        f"{PHL}:{line}: invalid YAML: unacceptable character #x0007: control characters are not allowed",
    )


# ---------------------------------------------------------------- top level


@pytest.mark.parametrize(
    ("text", "got"),
    [
        ("- name: phl-co-12\n- kind: edge\n", "a list"),
        ("phl-co-12\n", "'phl-co-12'"),
        ("", "nothing"),
    ],
    ids=["list", "scalar", "empty"],
)
@pytest.mark.parametrize("rel", [PHL, GRID])
def test_top_level_must_be_a_mapping(cli, inv, rel, text, got):
    (inv / rel).write_text(text)
    keys = (
        "name, defaults, regions, gpus"
        if rel == GRID
        else "name, kind, region, jurisdiction, location, endpoint, health_path, api_key_env, "
        "cost_per_gpu_hour, drain, labels, models, nodes, provision, tls_ca, tls_cert, tls_key"
    )
    invalid(cli, f"{rel}:1: must be a mapping of {keys} (got {got})")


def test_missing_grid_yaml(cli, inv):
    (inv / GRID).unlink()
    invalid(cli, "grid.yaml: missing: every inventory needs a grid.yaml (see `gridctl init`)")


# ---------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_suggests_the_near_match(cli, inv):
    line = edit(inv, PHL, "jurisdiction: US", "juristiction: US")
    first_key = line_in(
        inv, PHL, "name: phl-co-12\n"
    )  # a missing key is reported on its mapping's first line
    invalid(
        cli,
        f"{PHL}:{first_key}: jurisdiction: missing (required)",
        f"{PHL}:{line}: juristiction: unknown key; did you mean 'jurisdiction'?",
    )


def test_unknown_key_in_a_node_suggests_the_near_match(cli, inv):
    line = edit(inv, PHL, "    port: 2222", "    prot: 2222")
    invalid(cli, f"{PHL}:{line}: nodes[1].prot: unknown key; did you mean 'port'?")


def test_unknown_key_without_near_match_lists_the_keys(cli, inv):
    line = edit(
        inv,
        PHL,
        "    gpus: {model: L40S, count: 4}\n  - name",
        "    colour: red\n    gpus: {model: L40S, count: 4}\n  - name",
    )
    invalid(
        cli,
        f"{PHL}:{line}: nodes[0].colour: unknown key; "
        "expected one of: name, host, port, user, key, jump, gpus, provision",
    )


def test_unknown_key_in_grid(cli, inv):
    line = edit(inv, GRID, "regions:\n", "regoins:\n")
    invalid(cli, f"grid.yaml:{line}: regoins: unknown key; did you mean 'regions'?")


def test_non_string_unknown_key_points_at_its_line(cli, inv):
    line = edit(inv, PHL, "drain: false\n", "drain: false\n1: one\n") + 1
    problems = invalid(
        cli,
        f"{PHL}:{line}: 1: unknown key; expected one of: name, kind, region, jurisdiction, "
        "location, endpoint, health_path, api_key_env, cost_per_gpu_hour, drain, labels, models, nodes, "
        "provision, tls_ca, tls_cert, tls_key",
    )
    assert len(problems) == 1


# ---------------------------------------------------------------- wrong types


def test_spec_example_gpu_count_four(cli, inv):
    text = (inv / PHL).read_text()
    second = text.index("  - name: phl-co-12-gpu-02")
    at = text.index("count: 4}", second)
    (inv / PHL).write_text(text[:at] + "count: four}" + text[at + len("count: 4}") :])
    line = text.count("\n", 0, at) + 1
    assert line == 29  # the example inventory as shipped
    invalid(
        cli,
        f"sites/phl-co-12.yaml:{line}: nodes[1].gpus.count: must be a positive integer (got 'four')",
    )


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "cost_per_gpu_hour: 1.35",
            "cost_per_gpu_hour: cheap",
            "cost_per_gpu_hour: must be a cost (got 'cheap')",
        ),
        (
            "labels:\n  tier: metro\n  operator: acme\n  metro: phl",
            "labels: [metro, acme]",
            "labels: must be a mapping of label to value (got a list)",
        ),
        (
            "location: {lat: 39.9612, lon: -75.1538}",
            "location: [39.9612, -75.1538]",
            "location: must be a mapping of lat, lon (got a list)",
        ),
        ("drain: false", "drain: maybe", "drain: must be true or false (got 'maybe')"),
        ("    port: 2222", "    port: '2222'", "nodes[1].port: must be a port (got '2222')"),
        (
            "    capacity: 96",
            "    capacity: lots",
            "models[0].capacity: must be a positive integer (got 'lots')",
        ),
    ],
    ids=[
        "string-for-number",
        "list-for-mapping",
        "list-for-location",
        "drain-maybe",
        "quoted-port",
        "capacity",
    ],
)
def test_wrong_types(cli, inv, old, new, expected):
    line = edit(inv, PHL, old, new)
    invalid(cli, f"{PHL}:{line}: {expected}")


# ---------------------------------------------------------------- out of range


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("lat: 39.9612", "lat: 91", "location.lat: must be a latitude between -90 and 90 (got 91)"),
        (
            "lon: -75.1538",
            "lon: -181",
            "location.lon: must be a longitude between -180 and 180 (got -181)",
        ),
        (
            "count: 4}\n  - name: phl-co-12-gpu-02",
            "count: 0}\n  - name: phl-co-12-gpu-02",
            "nodes[0].gpus.count: must be a positive integer between 1 and 256 (got 0)",
        ),
        (
            "cost_per_gpu_hour: 1.35",
            "cost_per_gpu_hour: -0.5",
            "cost_per_gpu_hour: must be a cost between 0 and 1000 (got -0.5)",
        ),
        (
            "cost_per_gpu_hour: 1.35",
            "cost_per_gpu_hour: 1000.5",
            "cost_per_gpu_hour: must be a cost between 0 and 1000 (got 1000.5)",
        ),
        (
            "    port: 2222",
            "    port: 70000",
            "nodes[1].port: must be a port between 1 and 65535 (got 70000)",
        ),
        (
            "    port: 2222",
            "    port: 0",
            "nodes[1].port: must be a port between 1 and 65535 (got 0)",
        ),
    ],
    ids=[
        "lat-91",
        "lon-minus-181",
        "gpus-0",
        "cost-negative",
        "cost-over-max",
        "port-70000",
        "port-0",
    ],
)
def test_out_of_range(cli, inv, old, new, expected):
    line = edit(inv, PHL, old, new)
    invalid(cli, f"{PHL}:{line}: {expected}")


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("yaml_value", "shown"),
    [
        ("phl co 12", "'phl co 12'"),
        ("phl;co-12", "'phl;co-12'"),
        ("$phl-co-12", "'$phl-co-12'"),
        ("phl/co-12", "'phl/co-12'"),
        ('"phl\'co-12"', '"phl\'co-12"'),
        ("PHL-CO-12", "'PHL-CO-12'"),
    ],
    ids=["space", "semicolon", "dollar", "slash", "quote", "uppercase"],
)
def test_site_name_must_be_a_dns_label(cli, inv, yaml_value, shown):
    line = edit(inv, PHL, "name: phl-co-12\n", f"name: {yaml_value}\n")
    invalid(cli, f"{PHL}:{line}: name: {DNS} (got {shown})")


def test_node_name_must_be_a_dns_label(cli, inv):
    line = edit(inv, PHL, "name: phl-co-12-gpu-02", "name: gpu_02")
    invalid(cli, f"{PHL}:{line}: nodes[1].name: {DNS} (got 'gpu_02')")


def test_region_name_must_be_a_dns_label(cli, inv):
    line = edit(inv, GRID, "name: us-central ", "name: US Central ")
    invalid(cli, f"grid.yaml:{line}: regions[2].name: {DNS} (got 'US Central')")


# ---------------------------------------------------------------- jurisdictions


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("XX", f"{ISO} (got 'XX')"),
        ("USA", f"{ISO} (got 'USA')"),
        ("us", f"{ISO} (got 'us'); write it in capitals: US"),
        ("NO", f"{ISO} (got false){BOOL_HINT}"),
    ],
    ids=["XX", "USA", "lowercase", "unquoted-NO"],
)
def test_site_jurisdiction_must_be_a_country_code(cli, inv, value, expected):
    line = edit(inv, PHL, "jurisdiction: US", f"jurisdiction: {value}")
    invalid(cli, f"{PHL}:{line}: jurisdiction: {expected}")


def test_region_allowed_jurisdictions_each_checked(cli, inv):
    line = edit(inv, GRID, "allowed_jurisdictions: [DE]", "allowed_jurisdictions: [XX, de, NO, EU]")
    where = f"grid.yaml:{line}: regions[5].allowed_jurisdictions"
    invalid(
        cli,
        f"{where}[0]: {ISO}, or a group: EU, EEA (got 'XX')",
        f"{where}[1]: {ISO} (got 'de'); write it in capitals: DE",
        f"{where}[2]: {ISO}, or a group: EU, EEA (got false){BOOL_HINT}",
    )


# ---------------------------------------------------------------- duplicates across files


def test_same_site_name_in_two_files(cli, inv):
    shutil.copy(inv / PHL, inv / "sites/phl-co-12b.yaml")
    c = "sites/phl-co-12b.yaml"
    name, n1, h1 = (
        line_in(inv, PHL, s) for s in ("name: phl-co-12\n", "name: phl-co-12-gpu-01", "host: gpu-01.")
    )
    n2, h2 = (line_in(inv, PHL, s) for s in ("name: phl-co-12-gpu-02", "host: gpu-02."))
    invalid(
        cli,
        f"{c}:{name}: name: duplicate site name 'phl-co-12' (also in {PHL})",
        f"{c}:{name}: name: must match the file name 'phl-co-12b' (rename the file or the site)",
        f"{c}:{n1}: nodes[0].name: duplicate node name 'phl-co-12-gpu-01' (also at {PHL}:{n1}); "
        "node names are unique across the grid",
        f"{c}:{h1}: nodes[0].host: duplicate address "
        f"gpu-01.phl-co-12.grid.example.net:22 (also at {PHL}:{h1})",
        f"{c}:{n2}: nodes[1].name: duplicate node name 'phl-co-12-gpu-02' (also at {PHL}:{n2}); "
        "node names are unique across the grid",
        f"{c}:{h2}: nodes[1].host: duplicate address "
        f"gpu-02.phl-co-12.grid.example.net:2222 (also at {PHL}:{h2})",
    )


def test_same_site_name_yaml_and_yml(cli, inv):
    shutil.copy(inv / PHL, inv / "sites/phl-co-12.yml")
    problems = problems_of(cli("inventory", "validate"))
    name = line_in(inv, PHL, "name: phl-co-12\n")
    assert problems[0] == f"sites/phl-co-12.yml:{name}: name: duplicate site name 'phl-co-12' (also in {PHL})"
    assert not any("must match the file name" in p for p in problems)  # the stem matches
    assert len(problems) == 5  # the site, and its two nodes' names and addresses


def test_duplicate_node_name_across_files(cli, inv):
    line = edit(inv, POP, "name: phl-pop-01-gpu-02", "name: phl-co-12-gpu-01")
    other = line_in(inv, PHL, "name: phl-co-12-gpu-01")
    invalid(
        cli,
        f"{POP}:{line}: nodes[1].name: duplicate node name 'phl-co-12-gpu-01' "
        f"(also at {PHL}:{other}); node names are unique across the grid",
    )


def test_duplicate_host_and_port_across_files(cli, inv):
    line = edit(
        inv,
        POP,
        "host: gpu-02.phl-pop-01.grid.example.net",
        "host: gpu-02.phl-co-12.grid.example.net\n    port: 2222",
    )
    other = line_in(inv, PHL, "host: gpu-02.phl-co-12")
    invalid(
        cli,
        f"{POP}:{line}: nodes[1].host: duplicate address "
        f"gpu-02.phl-co-12.grid.example.net:2222 (also at {PHL}:{other})",
    )


def test_duplicate_address_when_ports_differ_only_by_the_default(cli, inv):
    # phl-co-12-gpu-01 has no port (grid default 22); here 22 is explicit,
    # and the host differs in case only
    line = edit(
        inv,
        POP,
        "host: gpu-02.phl-pop-01.grid.example.net",
        "host: GPU-01.phl-co-12.grid.example.net\n    port: 22",
    )
    other = line_in(inv, PHL, "host: gpu-01.phl-co-12")
    invalid(
        cli,
        f"{POP}:{line}: nodes[1].host: duplicate address "
        f"GPU-01.phl-co-12.grid.example.net:22 (also at {PHL}:{other})",
    )


# ---------------------------------------------------------------- references


def test_unknown_region_suggests_the_near_match(cli, inv):
    line = edit(inv, PHL, "region: us-phl", "region: us-phi")
    invalid(
        cli,
        f"{PHL}:{line}: region: unknown region 'us-phi'; did you mean 'us-phl'? "
        "(regions in grid.yaml: us-east, us-phl, us-central, eu-de, eu-fr, eu-de-sovereign)",
    )


def test_latency_to_an_unknown_site(cli, inv):
    line = edit(inv, GRID, "      jc-edge-01: 0.9", "      jc-edge-99: 0.9")
    invalid(
        cli,
        f"grid.yaml:{line}: regions[0].latency_ms.jc-edge-99: "
        "unknown site 'jc-edge-99'; did you mean 'jc-edge-01'?",
    )


# ---------------------------------------------------------------- endpoints


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "ftp://phl-co-12.infer.example.net",
            "must be an http(s) URL such as https://site.example.net (got 'ftp://phl-co-12.infer.example.net')",
        ),
        (
            "phl-co-12.infer.example.net",
            "must be an http(s) URL such as https://site.example.net (got 'phl-co-12.infer.example.net')",
        ),
        (
            "https://ops:s3cr3t-pw@phl-co-12.infer.example.net",
            "must not carry credentials; name an environment variable in api_key_env",
        ),
        (
            "https://phl-co-12.infer.example.net/?model=x",
            "must be a base URL without query or fragment (got 'https://phl-co-12.infer.example.net/?model=x')",
        ),
    ],
    ids=["ftp", "no-scheme", "credentials", "query"],
)
def test_endpoint_must_be_a_plain_http_url(cli, inv, url, message):
    line = edit(inv, PHL, "endpoint: https://phl-co-12.infer.example.net", f"endpoint: {url}")
    invalid(cli, f"{PHL}:{line}: endpoint: {message}")


def test_endpoint_credentials_never_echoed(cli, inv):
    edit(
        inv,
        PHL,
        "endpoint: https://phl-co-12.infer.example.net",
        "endpoint: https://ops:s3cr3t-pw@x.example.net",
    )
    res = cli("inventory", "validate", "-o", "json")
    assert res.rc == 5
    assert "s3cr3t" not in res.out and "s3cr3t" not in res.err


# ---------------------------------------------------------------- all at once


def test_every_problem_in_every_file_reported_together_sorted(cli, inv):
    g = edit(inv, GRID, "slo_ms: 500", "slo_ms: -5")
    lat = edit(inv, PHL, "lat: 39.9612", "lat: 91")
    cnt = edit(inv, PHL, "count: 4}\n  - name: phl-co-12-gpu-02", "count: 0}\n  - name: phl-co-12-gpu-02")
    drn = edit(inv, POP, "drain: false", "drain: maybe")
    jur = edit(inv, "sites/ber-edge-01.yaml", "jurisdiction: DE", "jurisdiction: de")
    bad = "sites/muc-co-02.yaml"
    (inv / bad).write_text("name: [muc\n")
    problems = problems_of(cli("inventory", "validate"))
    assert problems == [
        f"grid.yaml:{g}: defaults.slo_ms: must be milliseconds between 1 and 600000 (got -5)",
        f"sites/ber-edge-01.yaml:{jur}: jurisdiction: {ISO} (got 'de'); write it in capitals: DE",
        f"{bad}:2: invalid YAML: did not find expected ',' or ']'",
        f"{PHL}:{lat}: location.lat: must be a latitude between -90 and 90 (got 91)",
        f"{PHL}:{cnt}: nodes[0].gpus.count: must be a positive integer between 1 and 256 (got 0)",
        f"{POP}:{drn}: drain: must be true or false (got 'maybe')",
    ]

    def key(p: str) -> tuple[str, int]:
        file, line = p.split(": ", 1)[0].rsplit(":", 1)
        return file, int(line)

    assert [key(p) for p in problems] == sorted(key(p) for p in problems)


def test_local_problem_does_not_hide_a_cross_file_problem(cli, inv):
    # cross-file checks read the plain values, so a broken field elsewhere in a
    # file does not hide them
    edit(inv, PHL, "drain: false", "drain: maybe")
    edit(inv, POP, "name: phl-pop-01-gpu-02", "name: phl-co-12-gpu-01")
    edit(inv, "sites/fra-pop-01.yaml", "cost_per_gpu_hour: 3.40", "cost_per_gpu_hour: -1")
    edit(inv, "sites/fra-pop-01.yaml", "region: eu-de", "region: eu-dd")
    problems = problems_of(cli("inventory", "validate"))
    assert any("drain: must be true or false" in p for p in problems), problems
    assert any("duplicate node name 'phl-co-12-gpu-01'" in p for p in problems), problems
    assert any("cost_per_gpu_hour: must be a cost" in p for p in problems), problems
    assert any("unknown region 'eu-dd'; did you mean 'eu-de'?" in p for p in problems), problems
    assert len(problems) == 4, problems


# ================================================================ unit: yamldoc


DOC = """\
name: phl-co-12
location: {lat: 1, lon: 2}
nodes:
  - name: a
    gpus:
      count: 4
  - name: b
7: numeric key
true: boolean key
"""


@pytest.mark.parametrize(
    ("path", "at_key", "line"),
    [
        ((), False, 1),
        (("name",), False, 1),
        (("location", "lon"), False, 2),
        (("nodes",), False, 4),  # a block sequence starts on its first item
        (("nodes",), True, 3),
        (("nodes", 0, "gpus", "count"), False, 6),
        (("nodes", 1, "name"), False, 7),
        (("nodes", 5, "name"), False, 4),  # no such item: the list's line
        (("nodes", 0, "nope"), False, 4),  # no such key: the parent's line
        (("7",), True, 8),  # keys named by their text, as problem paths name them
        (("True",), True, 9),
    ],
)
def test_line_of(path, at_key, line):
    assert parse_document(DOC).line_of(path, at_key) == line


def test_empty_document():
    doc = parse_document("# nothing here\n")
    assert doc.value is None
    assert doc.line_of(("name",)) == 1


def test_path_str():
    assert path_str(("nodes", 1, "gpus", "count")) == "nodes[1].gpus.count"
    assert path_str(()) == ""


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a: &x [1, *x]\n", 1, "recursive alias"),
        ("a: 1\nb: &x\n  c: *x\n", 2, "recursive alias"),
        ("a: &x\n  <<: *x\n", 1, "recursive alias"),
        ("a: 1\nb: *nope\n", 2, "invalid YAML: found undefined alias"),
        ("a: 1\n---\nb: 2\n", 2, "invalid YAML: but found another document"),
        ("a: 1\nb:\n\tc: 2\n", 3, "invalid YAML: found character that cannot start any token"),
        ("a: 1\nb: 'open\n", 3, "invalid YAML: found unexpected end of stream"),
        ("a: 1\na: 2\n", 2, "duplicate key 'a' (the later value would silently win); keep one"),
        ("1: a\n0x1: b\n", 2, "duplicate key 1 (the later value would silently win); keep one"),
        ("? [a, b]\n: 1\n", 1, "a key must be a plain value"),
        ("a: !!int 0x\n", 1, "invalid number '0x'"),
        ("a: 1\nb: !!bool maybe\n", 2, "invalid boolean 'maybe'"),
        (
            "a: 1\nb: x\x00\n",
            2,
            "invalid YAML: unacceptable character #x0000: control characters are not allowed",
        ),
    ],
    ids=[
        "recursive-seq",
        "recursive-map",
        "recursive-merge",
        "undefined-alias",
        "two-documents",
        "tab",
        "unclosed-quote",
        "duplicate-key",
        "duplicate-int-key",
        "complex-key",
        "bad-int",
        "bad-bool",
        "nul",
    ],
)
def test_parse_document_errors(text, line, message):
    with pytest.raises(DocumentError) as err:
        parse_document(text)
    assert (err.value.line, err.value.message) == (line, message)


def _laughs(open_: str, close: str, item: str) -> str:
    """The "billion laughs": 9 levels of 10 aliases each to the level below (10**9 leaves)."""
    text = "l0: &l0 " + open_ + ", ".join(item.format(i=i, ref="lol") for i in range(10)) + close + "\n"
    for lv in range(1, 9):
        text += (
            f"l{lv}: &l{lv} "
            + open_
            + ", ".join(item.format(i=i, ref=f"*l{lv - 1}") for i in range(10))
            + close
            + "\n"
        )
    return text


@pytest.mark.parametrize(
    "text",
    [
        _laughs("[", "]", "{ref}"),
        _laughs("{", "}", "k{i}: {ref}"),
        # the same growth through merge keys: each level merges and holds the one below twice
        "l0: &l0 {a: 1, b: 2}\n"
        + "".join(f"l{i}: &l{i}\n  <<: *l{i - 1}\n  x: *l{i - 1}\n  y: *l{i - 1}\n" for i in range(1, 40)),
    ],
    ids=["sequences", "mappings", "merge-keys"],
)
def test_alias_bombs_are_refused(text):
    with pytest.raises(DocumentError, match=r"^document too large \(too many nodes or aliases\)$"):
        parse_document(text)


def test_aliases_within_limits_are_expanded():
    doc = parse_document("base: &b [1, 2]\nx: *b\ny: *b\n")
    assert doc.value == {"base": [1, 2], "x": [1, 2], "y": [1, 2]}


@pytest.mark.parametrize("depth", [51, 52, 2_000, 100_000])
def test_deep_nesting(depth):
    text = "[" * depth + "]" * depth
    if depth <= 51:
        value = parse_document(text).value
        for _ in range(depth - 1):
            value = value[0]
        assert value == []
    else:
        with pytest.raises(DocumentError) as err:
            parse_document(text)
        assert err.value.line == 1
        assert "nest" in err.value.message


def test_deep_block_nesting_names_the_line():
    text = "".join("  " * i + f"k{i}:\n" for i in range(60)) + "  " * 60 + "leaf\n"
    with pytest.raises(DocumentError) as err:
        parse_document(text)
    assert err.value.message == "nested deeper than 50 levels"
    assert err.value.line == 51  # the key k50, at depth 51


MERGE = """\
defaults: &defaults
  port: 22
  user: ops
extra: &extra
  user: admin
  key: ~/.ssh/id
node:
  <<: [*defaults, *extra]
  port: 2222
"""


def test_merge_keys():
    doc = parse_document(MERGE)
    # the node's own key wins; among merged mappings the first wins
    assert doc.value["node"] == {"port": 2222, "user": "ops", "key": "~/.ssh/id"}
    assert doc.line_of(("node", "port")) == 9
    assert doc.line_of(("node", "user")) == 8  # merged: the node's own first line


@pytest.mark.parametrize("text", ["a: &a [1]\nb:\n  <<: *a\n", "b:\n  <<: 5\n"])
def test_merge_of_a_non_mapping(text):
    with pytest.raises(DocumentError, match="merge key '<<' needs a mapping"):
        parse_document(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("a: yes\nb: off\nc: NO\nd: 'NO'\n", {"a": True, "b": False, "c": False, "d": "NO"}),
        (
            "a: 0x1F\nb: 1_000\nc: 1.5\nd: .inf\ne: 1e3\n",
            {"a": 31, "b": 1000, "c": 1.5, "d": float("inf"), "e": "1e3"},
        ),
        ("a: ~\nb: 2024-01-01\nc: !custom x\n", {"a": None, "b": "2024-01-01", "c": "x"}),
        ("\ufeffa: 1\n", {"a": 1}),
    ],
    ids=["booleans", "numbers", "null-timestamp-tag", "bom"],
)
def test_scalars(text, value):
    assert parse_document(text).value == value


# ================================================================ unit: build_site / build_grid


def site_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "phl-co-12",
        "kind": "central-office",
        "region": "us-phl",
        "jurisdiction": "US",
        "location": {"lat": 39.96, "lon": -75.15},
        "endpoint": "https://phl-co-12.infer.example.net/",
        "cost_per_gpu_hour": 1.35,
        "labels": {"tier": "metro"},
        "models": [{"name": "llama-3.1-8b-instruct", "capacity": 96}],
        "nodes": [
            {"name": "gpu-01", "host": "gpu-01.example.net", "gpus": {"model": "L40S", "count": 4}},
            {"name": "gpu-02", "host": "10.0.0.2", "port": 2222, "user": "root"},
        ],
    }
    for key, value in changes.items():
        if value is ...:
            del doc[key]
        else:
            doc[key] = value
    return doc


def test_build_site_valid_applies_ssh_defaults():
    site, issues = build_site(site_doc(), SshDefaults(user="gridops", port=2200, key="~/.ssh/k"))
    assert issues == []
    assert site is not None
    assert site.endpoint == "https://phl-co-12.infer.example.net"  # trailing slash dropped
    a, b = site.nodes
    assert (a.site, a.port, a.user, a.key, a.gpus.count) == (
        "phl-co-12",
        2200,
        "gridops",
        "~/.ssh/k",
        4,
    )
    assert (b.port, b.user, b.gpus) == (2222, "root", None)


NODE = {"name": "gpu-01", "host": "gpu-01.example.net"}


@pytest.mark.parametrize(
    ("changes", "path", "message"),
    [
        ({"name": ...}, "name", "missing (required)"),
        ({"name": "phl co"}, "name", f"{DNS} (got 'phl co')"),
        ({"name": "a" * 64}, "name", DNS),
        ({"name": "-phl"}, "name", DNS),
        ({"name": "phl-"}, "name", DNS),
        ({"name": "phl.co"}, "name", DNS),
        ({"name": 12}, "name", f"{DNS} (got 12)"),
        ({"name": None}, "name", f"{DNS} (got nothing)"),
        (
            {"kind": "central-ofice"},
            "kind",
            "(got 'central-ofice'); did you mean 'central-office'?",
        ),
        (
            {"kind": ["edge"]},
            "kind",
            "must be one of regional-pop, central-office, edge, cloud (got a list)",
        ),
        ({"region": "US PHL"}, "region", DNS),
        ({"jurisdiction": "EU"}, "jurisdiction", f"{ISO} (got 'EU')"),
        ({"jurisdiction": False}, "jurisdiction", f"{ISO} (got false){BOOL_HINT}"),
        ({"location": {"lat": 1}}, "location.lon", "missing (required)"),
        (
            {"location": {"lat": 1, "lon": 2, "elevation": 3}},
            "location.elevation",
            "unknown key; expected one of: lat, lon",
        ),
        (
            {"location": {"lat": float("nan"), "lon": 2}},
            "location.lat",
            "must be a latitude (got nan)",
        ),
        ({"location": {"lat": True, "lon": 2}}, "location.lat", "must be a latitude (got true)"),
        (
            {"endpoint": "https://x.example.net#frag"},
            "endpoint",
            "must be a base URL without query or fragment",
        ),
        ({"endpoint": "https://x.example.net:0"}, "endpoint", "is not a valid URL"),
        ({"endpoint": "https://user@x.example.net"}, "endpoint", "must not carry credentials"),
        ({"endpoint": "http://[::1"}, "endpoint", "must be an http(s) URL"),
        ({"endpoint": 443}, "endpoint", "must be an http(s) URL (got 443)"),
        (
            {"api_key_env": "sk-live-123"},
            "api_key_env",
            "must be an environment variable name (got 'sk-live-123')",
        ),
        (
            {"cost_per_gpu_hour": float("inf")},
            "cost_per_gpu_hour",
            "must be a cost between 0 and 1000 (got inf)",
        ),
        ({"cost_per_gpu_hour": True}, "cost_per_gpu_hour", "must be a cost (got true)"),
        ({"drain": "yes"}, "drain", "must be true or false (got 'yes')"),
        ({"labels": {"tier": 1}}, "labels.tier", "(quote numbers) (got 1)"),
        ({"labels": {"bad key!": "x"}}, "labels.bad key!", "must be a label key"),
        ({"models": {"name": "m"}}, "models", "must be a list (got a mapping)"),
        (
            {"models": [{"name": "m", "capacity": 1}, {"name": "m", "capacity": 2}]},
            "models[1].name",
            "model 'm' is listed twice",
        ),
        (
            {"models": [{"name": "m", "capacity": 0}]},
            "models[0].capacity",
            "between 1 and 1000000 (got 0)",
        ),
        (
            {"models": ["m"]},
            "models[0]",
            "must be a mapping of name, capacity, tensor_parallel, gpu (got 'm')",
        ),
        ({"nodes": [{"host": "h"}]}, "nodes[0].name", "missing (required)"),
        (
            {"nodes": [{**NODE, "host": "h; rm -rf /"}]},
            "nodes[0].host",
            "must be a host name or IP address",
        ),
        (
            {"nodes": [{**NODE, "host": "-oProxyCommand=x"}]},
            "nodes[0].host",
            "must be a host name or IP address",
        ),
        ({"nodes": [{**NODE, "port": True}]}, "nodes[0].port", "must be a port (got true)"),
        ({"nodes": [{**NODE, "port": 65536}]}, "nodes[0].port", "between 1 and 65535 (got 65536)"),
        (
            {"nodes": [{**NODE, "user": "root;id"}]},
            "nodes[0].user",
            "must be a user name (got 'root;id')",
        ),
        (
            {"nodes": [{**NODE, "key": ""}]},
            "nodes[0].key",
            "must be a path to a private key file (got '')",
        ),
        (
            {"nodes": [{**NODE, "gpus": {"model": "H100", "count": 257}}]},
            "nodes[0].gpus.count",
            "between 1 and 256 (got 257)",
        ),
        (
            {"nodes": [{**NODE, "gpus": {"model": "H100", "count": 2.0}}]},
            "nodes[0].gpus.count",
            "must be a positive integer (got 2.0)",
        ),
        (
            {"nodes": [{**NODE, "gpus": {"model": "H100;x", "count": 2}}]},
            "nodes[0].gpus.model",
            "must be a GPU model",
        ),
        ({"nodes": [{**NODE, "gpus": {"count": 2}}]}, "nodes[0].gpus.model", "missing (required)"),
    ],
)
def test_build_site_problems(changes, path, message):
    site, issues = build_site(site_doc(**changes), SshDefaults())
    assert site is None
    found = [(path_str(i.path), i.message) for i in issues]
    assert any(p == path and message in m for p, m in found), found


def test_build_site_reports_every_problem():
    doc = site_doc(name="Bad Name", drain="maybe", location={"lat": 91, "lon": 181})
    _, issues = build_site(doc, SshDefaults())
    assert sorted(path_str(i.path) for i in issues) == [
        "drain",
        "location.lat",
        "location.lon",
        "name",
    ]


def test_build_site_unknown_key_points_at_the_key():
    _, issues = build_site(site_doc(juristiction="US"), SshDefaults())
    (issue,) = [i for i in issues if i.path == ("juristiction",)]
    assert issue.at_key and issue.message == "unknown key; did you mean 'jurisdiction'?"


def grid_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "acme-grid",
        "defaults": {
            "ssh": {"user": "gridops", "port": 2222},
            "slo_ms": 400,
            "weights": {"latency": 1},
        },
        "regions": [
            {
                "name": "eu-de",
                "location": {"lat": 50.1, "lon": 8.7},
                "jurisdiction": "DE",
                "allowed_jurisdictions": ["EU"],
                "latency_ms": {"fra-pop-01": 1.1},
            },
            {"name": "us-east", "location": {"lat": 40.7, "lon": -74.0}, "jurisdiction": "US"},
        ],
    }
    doc.update(changes)
    return doc


def region(**changes: Any) -> dict[str, Any]:
    r = {"name": "r1", "location": {"lat": 1, "lon": 2}, "jurisdiction": "FR"}
    r.update(changes)
    return r


def test_build_grid_valid():
    grid, issues = build_grid(grid_doc())
    assert issues == []
    assert grid is not None
    assert (grid.ssh.user, grid.ssh.port, grid.slo_ms, grid.weights.latency, grid.weights.cost) == (
        "gridops",
        2222,
        400,
        1,
        0.25,
    )
    eu, us = grid.regions
    assert "FR" in eu.allowed and "US" not in eu.allowed and eu.latency_ms == {"fra-pop-01": 1.1}
    assert us.allowed_jurisdictions == ("US",)  # defaults to its own jurisdiction


@pytest.mark.parametrize(
    ("changes", "path", "message"),
    [
        ({"name": "Acme Grid"}, "name", DNS),
        ({"nme": "x"}, "nme", "unknown key; did you mean 'name'?"),
        ({"defaults": {"ssh": {"port": 0}}}, "defaults.ssh.port", "between 1 and 65535 (got 0)"),
        ({"defaults": {"ssh": {"user": "a b"}}}, "defaults.ssh.user", "must be a user name"),
        ({"defaults": {"slo_ms": 0}}, "defaults.slo_ms", "between 1 and 600000 (got 0)"),
        ({"defaults": {"slo_ms": "fast"}}, "defaults.slo_ms", "must be milliseconds (got 'fast')"),
        (
            {"defaults": {"weights": {"latency": 0, "cost": 0, "headroom": 0}}},
            "defaults.weights",
            "at least one weight must be above 0",
        ),
        (
            {"defaults": {"weights": {"latency": -1}}},
            "defaults.weights.latency",
            "between 0 and 1000 (got -1)",
        ),
        (
            {"defaults": ["ssh"]},
            "defaults",
            "must be a mapping of ssh, slo_ms, weights, tls_ca, tls_cert, tls_key (got a list)",
        ),
        ({"regions": {"eu": {}}}, "regions", "must be a list (got a mapping)"),
        (
            {"regions": [region(), region()]},
            "regions[1].name",
            "duplicate region name 'r1' (also regions[0])",
        ),
        ({"regions": [region(name="R1")]}, "regions[0].name", DNS),
        (
            {"regions": [region(location={"lat": -91, "lon": 0})]},
            "regions[0].location.lat",
            "between -90 and 90 (got -91)",
        ),
        (
            {"regions": [region(jurisdiction="fr")]},
            "regions[0].jurisdiction",
            "write it in capitals: FR",
        ),
        (
            {"regions": [region(allowed_jurisdictions=[])]},
            "regions[0].allowed_jurisdictions",
            "must name at least one",
        ),
        (
            {"regions": [region(allowed_jurisdictions="EU")]},
            "regions[0].allowed_jurisdictions",
            "must be a list (got 'EU')",
        ),
        (
            {"regions": [region(allowed_jurisdictions=["EU", "XX"])]},
            "regions[0].allowed_jurisdictions[1]",
            "or a group: EU, EEA (got 'XX')",
        ),
        (
            {"regions": [region(latency_ms=[1])]},
            "regions[0].latency_ms",
            "must be a mapping of site name to milliseconds",
        ),
        (
            {"regions": [region(latency_ms={"a": -1})]},
            "regions[0].latency_ms.a",
            "between 0 and 600000 (got -1)",
        ),
        ({"regions": [region(latency_ms={"Bad Site": 1})]}, "regions[0].latency_ms.Bad Site", DNS),
        (
            {"regions": [region(latnecy_ms={})]},
            "regions[0].latnecy_ms",
            "did you mean 'latency_ms'?",
        ),
    ],
)
def test_build_grid_problems(changes, path, message):
    grid, issues = build_grid(grid_doc(**changes))
    assert grid is None
    found = [(path_str(i.path), i.message) for i in issues]
    assert any(p == path and message in m for p, m in found), found


@pytest.mark.parametrize("doc", [None, [], "acme", 5])
def test_build_grid_top_level_not_a_mapping(doc):
    grid, issues = build_grid(doc)
    assert grid is None
    assert [
        (i.path, i.message.startswith("must be a mapping of name, defaults, regions")) for i in issues
    ] == [((), True)]
