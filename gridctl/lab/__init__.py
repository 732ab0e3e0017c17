"""The lab grid: simulated OpenAI-compatible inference sites on loopback.

In-process, for tests and tools (see grid.py)::

    from gridctl.lab import run_lab

    with run_lab(inventory, speed=20, overlay=tmp / "lab-inventory") as lab:
        lab.urls                      # {site: "http://127.0.0.1:PORT"}
        lab.overlay                   # inventory whose endpoints point at the sites
        lab.set_mode("fra-*", "503")  # ok | 503 | hang | drop | slow

As a background process: ``gridctl lab up | status | fail | down`` (service.py).
"""

from gridctl.lab.grid import LabGrid, LabOptions, LabThread, NoSuchSite, run_lab
from gridctl.lab.site import FAIL_MODES, REGION_HEADER, SimSite, SiteSpec, build_site_specs

__all__ = [
    "FAIL_MODES",
    "REGION_HEADER",
    "LabGrid",
    "LabOptions",
    "LabThread",
    "NoSuchSite",
    "SimSite",
    "SiteSpec",
    "build_site_specs",
    "run_lab",
]
