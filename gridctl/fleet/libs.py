"""paramiko and httpx, imported without the parts gridctl never uses.

Both libraries import optional extras at import time whenever those happen to
be installed, and here they always are:

- ``paramiko.config`` imports ``invoke`` (a hard dependency of paramiko 5) for
  ssh_config's ``Match exec``; invoke pulls in ``unittest.mock`` and
  ``asyncio``. gridctl never reads an ssh_config. About 40 ms.
- ``httpx/__init__`` imports its command-line client, ``httpx._main``, which
  pulls in rich, pygments and click (Typer installs all three). About 40 ms,
  and in ``gridctl health`` it is paid on a thread, competing with the SSH
  fan-out for the interpreter.

Each is hidden (``None`` in ``sys.modules``, which makes its import raise
ImportError; both libraries catch that and carry on) only while the library
itself is first imported, then restored, so anything that imports invoke or
``httpx._main`` later gets the real module. Every first import of paramiko or
httpx in gridctl's fleet code goes through here; a later plain ``import
paramiko`` just finds it loaded.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def load_paramiko() -> ModuleType:
    return _import_without("paramiko", "invoke")


def load_httpx() -> ModuleType:
    return _import_without("httpx", "httpx._main")


def _import_without(name: str, extra: str) -> ModuleType:
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    hide = extra not in sys.modules
    if hide:
        sys.modules[extra] = None  # type: ignore[assignment]
    try:
        return importlib.import_module(name)
    finally:
        if hide and extra in sys.modules and sys.modules[extra] is None:
            del sys.modules[extra]
