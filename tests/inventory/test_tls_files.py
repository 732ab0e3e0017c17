"""tls_ca / tls_cert / tls_key in the inventory: file paths (never PEM text), resolved against
the inventory directory, the grid's defaults under each site's own, every file read and the set
of them loaded as TLS would load it, each problem at its file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridctl.core.errors import InventoryError
from gridctl.inventory.load import load_inventory
from tests.inventory.test_validation import GRID, PHL, edit, invalid
from tests.routing.tls import make_ca, server_context

POP = "sites/phl-pop-01.yaml"


@pytest.fixture
def pki(inv: Path) -> Path:
    """pki/ in the inventory: a CA (grid-CA.pem) and a client certificate (client.crt, client.key)."""
    d = inv / "pki"
    d.mkdir()
    server_context(make_ca(d, "grid CA"), d, "client")
    return d


def _problems(inv: Path) -> list[str]:
    with pytest.raises(InventoryError) as info:
        load_inventory(inv)
    return [str(p) for p in info.value.problems]


def test_grid_defaults_and_site_files_are_resolved_and_merged(inv: Path, pki: Path) -> None:
    edit(inv, GRID, "defaults:\n", "defaults:\n  tls_ca: pki/grid-CA.pem\n")
    edit(inv, PHL, "drain: false\n", "drain: false\ntls_cert: pki/client.crt\ntls_key: pki/client.key\n")
    other = make_ca(pki, "site CA")
    edit(inv, POP, "drain: false\n", f"drain: false\ntls_ca: {other.cert}\n")  # absolute: as written
    sites = {s.name: s for s in load_inventory(inv).sites}
    ca = str((pki / "grid-CA.pem").absolute())
    assert sites["phl-co-12"].tls.ca == ca
    assert sites["phl-co-12"].tls.cert == str((pki / "client.crt").absolute())
    assert sites["phl-co-12"].tls.key == str((pki / "client.key").absolute())
    assert sites["phl-pop-01"].tls.ca == str(other.cert) and sites["phl-pop-01"].tls.cert is None
    assert all(s.tls.ca == ca for n, s in sites.items() if n != "phl-pop-01")


def test_a_missing_file_pem_text_and_a_lone_key_are_located(inv: Path, pki: Path) -> None:
    line = edit(inv, GRID, "defaults:\n", "defaults:\n  tls_ca: pki/nope.pem\n") + 1
    text = "-----BEGIN PRIVATE KEY-----"
    pem = edit(inv, PHL, "drain: false\n", f'drain: false\ntls_key: "{text}"\n') + 1
    lone = edit(inv, POP, "drain: false\n", "drain: false\ntls_key: pki/client.key\n") + 1
    problems = _problems(inv)
    missing = f"{GRID}:{line}: defaults.tls_ca: cannot read pki/nope.pem ({inv.absolute()}/pki/nope.pem): "
    assert any(p.startswith(missing) and p.endswith("No such file or directory") for p in problems), problems
    assert (
        f"{PHL}:{pem}: tls_key: must be a file path, not PEM text: keep keys out of the inventory" in problems
    )
    assert (
        f"{POP}:{lone}: tls_key: needs tls_cert beside it: the client certificate this key is for" in problems
    )


def test_files_that_do_not_make_a_tls_context_fail_validate(cli, inv: Path, pki: Path) -> None:
    other = make_ca(pki, "other CA")
    server_context(other, pki, "stranger")  # stranger.key does not belong to client.crt
    line = edit(
        inv, PHL, "drain: false\n", "drain: false\ntls_cert: pki/client.crt\ntls_key: pki/stranger.key\n"
    )
    ca_line = edit(inv, POP, "drain: false\n", "drain: false\ntls_ca: pki/client.key\n")
    [mismatch, not_ca] = invalid(
        cli,
        f"{PHL}:{line + 1}: tls_cert: tls_cert certificate {pki.absolute()}/client.crt with key "
        f"{pki.absolute()}/stranger.key: key values mismatch (does the key belong to the certificate?)",
        f"{POP}:{ca_line + 1}: tls_ca: tls_ca {pki.absolute()}/client.key: no certificate or crl found",
    )
    assert mismatch and not_ca
