"""No internal error is reachable from user input (issue 15): each command, driven with
generated bad arguments, answers with a usage error (2) or an inventory error (5), an
``error:`` line and a ``hint:`` line; never an "unexpected" error (1) or a traceback.

In process (``gridctl.cli.main.run``), on the example inventory, with read-only commands or
writes refused before anything is written: hundreds of examples in seconds."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridctl.cli.main import run
from gridctl.output import Streams
from tests.conftest import EXAMPLE

MODEL = "llama-3.1-8b-instruct"


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    env = {"NO_COLOR": "1", "HOME": "/nonexistent"}
    rc = run(["-i", str(EXAMPLE), *argv], Streams(stdout=out, stderr=err, stdin=io.StringIO(), environ=env))
    return rc, out.getvalue(), err.getvalue()


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _refused(rc: int, err: str, allowed: tuple[int, ...] = (2, 5)) -> None:
    assert rc in allowed, (rc, err)
    lines = err.splitlines()
    assert any(line.startswith("error: ") for line in lines), err
    assert any(line.startswith("hint: ") for line in lines), err
    assert "unexpected" not in err and "Traceback" not in err and "bug in gridctl" not in err, err


# values no number option may take: not finite, not a number at all
bad_numbers = st.sampled_from(
    ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "abc", "", " ", "1,5", "0x10", "--", "½", "1e"]
) | st.text(max_size=12).filter(lambda t: not _is_number(t) and not t.startswith("-"))
bad_ints = bad_numbers.filter(lambda t: not _is_int(t)) | st.sampled_from(["1.5", "2e3"])

FLOAT_OPTIONS = [
    ["route", "test", "--from", "us-east", "--model", MODEL, "--slo-ms"],
    ["sim", "--duration"],
    ["sim", "--slo-ms"],
    ["sim", "--scale"],
    ["route", "probe", "--timeout"],
    ["health", "--timeout"],
    ["exec", "all", "--timeout"],
    ["daemon", "run", "--head-timeout"],
    ["daemon", "run", "--send-timeout"],
]
INT_OPTIONS = [
    ["route", "test", "--from", "us-east", "--model", MODEL, "--max-tokens"],
    ["route", "test", "--from", "us-east", "--model", MODEL, "--prompt-tokens"],
    ["route", "render", "--primaries"],
    ["route", "render", "--backups"],
    ["route", "render", "--admin-port"],
    ["route", "render", "--haproxy-buffer-kb"],
    ["route", "probe", "--samples"],
    ["sim", "--seed"],
]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FLOAT_OPTIONS), bad_numbers)
def test_a_float_option_refuses_what_is_not_a_finite_number(argv: list[str], value: str) -> None:
    rc, _, err = _run([*argv, value, *(["--", "true"] if argv[0] == "exec" else [])])
    _refused(rc, err, (2,))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(INT_OPTIONS), bad_ints)
def test_an_integer_option_refuses_what_is_not_an_integer(argv: list[str], value: str) -> None:
    rc, _, err = _run([*argv, value])
    _refused(rc, err, (2,))


names = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(
    lambda t: not t.startswith("-") and t.strip() == t and t != ""
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(
        [
            (["route", "render", "--format"], ("json", "yaml", "nginx", "haproxy", "envoy")),
            (["sim", "--policy"], ("grid", "nearest", "central", "round-robin", "grid-no-affinity")),
            (["sim", "--central"], ()),
            (["sim", "--profile"], ("voice-burst", "chat", "rag")),
            (["route", "test", "--model", MODEL, "--from"], ()),
            (["route", "test", "--from", "us-east", "--model"], ()),
            (["route", "test", "--from", "us-east", "--model", MODEL, "--jurisdiction"], ()),
            (["lab", "up", "--from"], ()),
        ]
    ),
    names,
)
def test_a_mistyped_name_or_choice_is_refused_with_a_hint(
    case: tuple[list[str], tuple[str, ...]], value: str
) -> None:
    argv, valid = case
    known = {"us-east", "us-phl", "us-central", "eu-de", "eu-fr", "eu-de-sovereign"}  # regions
    known |= {s.stem for s in (EXAMPLE / "sites").glob("*.yaml")}
    known |= {"llama-3.1-8b-instruct", "llama-3.1-70b-instruct", "parakeet-tdt-0.6b-v2"}
    if value in valid or value in known or "," in value or (argv[-1] == "--jurisdiction" and len(value) == 2):
        return  # a valid value (or a list, or a code): not what this test is about
    rc, _, err = _run([*argv, value])
    _refused(rc, err, (2, 4) if argv[-1] == "--jurisdiction" else (2,))


@pytest.mark.parametrize(
    "url", ["http://[::1", "ftp://x", "nohost", "http://", "http://a:99999", "http://a b", "://x", ""]
)
def test_a_malformed_url_is_a_usage_error(url: str) -> None:
    rc, _, err = _run(["daemon", "status", "--url", url])
    _refused(rc, err, (2,))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="ab*?[]!&,:/ =-", min_size=1, max_size=12))
def test_a_target_pattern_never_gives_an_internal_error(pattern: str) -> None:
    """Any pattern: selected (0), no such name (1, with a did-you-mean), or malformed (2)."""
    rc, _, err = _run(["site", "ls", pattern])
    assert "unexpected" not in err and "Traceback" not in err, err
    if rc != 0:
        _refused(rc, err, (1, 2))


def test_render_out_that_is_not_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("keep me\n")
    rc, _, err = _run(["route", "render", "-f", "json", "--out", str(target)])
    _refused(rc, err, (2,))
    assert target.read_text() == "keep me\n"  # nothing written over it
    rc, _, err = _run(["route", "render", "-f", "json", "--out", "/proc/no-such-dir"])
    _refused(rc, err, (2,))
