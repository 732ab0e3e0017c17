"""paramiko, imported without the part gridctl never uses.

``paramiko.config`` imports ``invoke`` (a hard dependency of paramiko 5) at
import time, for ssh_config's ``Match exec``; invoke pulls in
``unittest.mock`` and ``asyncio``: about 40 ms of every SSH command's start-up.
gridctl never reads an ssh_config.

invoke is hidden (``None`` in ``sys.modules``, which makes its import raise
ImportError; paramiko catches that and carries on) only while paramiko itself
is first imported, then restored, so anything that imports invoke later gets
the real module. Every first import of paramiko in gridctl's fleet code goes
through here; a later plain ``import paramiko`` just finds it loaded.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def load_paramiko() -> ModuleType:
    return _import_without("paramiko", "invoke")


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
