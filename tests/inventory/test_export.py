"""The Ansible export, checked by the real ansible-inventory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import cli_env


def _ansible_inventory() -> str:
    found = Path(sys.executable).with_name("ansible-inventory")
    path = str(found) if found.exists() else shutil.which("ansible-inventory")
    assert path, "ansible-inventory is not installed: `pip install -e '.[test]'` installs ansible-core"
    return path


def test_ansible_inventory_accepts_the_export(cli, inv: Path, tmp_path: Path) -> None:
    r = cli("inventory", "export", "--format", "ansible")
    assert r.rc == 0, r
    exported = tmp_path / "hosts.yaml"
    exported.write_text(r.out)
    proc = subprocess.run(
        [_ansible_inventory(), "-i", str(exported), "--list"],
        capture_output=True,
        text=True,
        env=cli_env(ANSIBLE_INVENTORY_UNPARSED_FAILED="true"),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr.upper(), proc.stderr
    data = json.loads(proc.stdout)
    hostvars = data["_meta"]["hostvars"]
    assert len(hostvars) == 24
    node = hostvars["phl-co-12-gpu-02"]
    assert node["ansible_host"] == "gpu-02.phl-co-12.grid.example.net"
    assert node["ansible_port"] == 2222 and node["ansible_user"] == "gridops"
    assert hostvars["chi-co-07-gpu-01"]["ansible_user"] == "acmeops"
    assert node["gridctl_site"] == "phl-co-12" and node["gridctl_gpu_model"] == "L40S"
    assert data["site_phl_co_12"]["hosts"] == ["phl-co-12-gpu-01", "phl-co-12-gpu-02"]
    assert set(data["region_us_phl"]["children"]) == {"site_phl_co_12", "site_phl_edge_04", "site_phl_pop_01"}
    assert set(data["kind_cloud"]["children"]) == {"site_cloud_use1"}
    assert set(data["jurisdiction_fr"]["children"]) == {
        "site_lyo_co_05",
        "site_par_edge_02",
        "site_par_pop_01",
    }


def test_ansible_graph_resolves_a_region_to_its_hosts(cli, tmp_path: Path) -> None:
    exported = tmp_path / "hosts.yaml"
    exported.write_text(cli("inventory", "export", "--format", "ansible").out)
    proc = subprocess.run(
        [_ansible_inventory(), "-i", str(exported), "--graph", "region_eu_de"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for host in ("fra-pop-01-gpu-01", "fra-pop-01-gpu-02", "muc-co-02-gpu-01", "ber-edge-01-gpu-01"):
        assert host in proc.stdout
    assert "phl-co-12-gpu-01" not in proc.stdout
