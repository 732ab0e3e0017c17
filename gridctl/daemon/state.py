"""The daemon's side of its state: each TLS site's context toward it, loaded from its files.

The state itself (sites, their live signals, breakers and calibration, the decisions over
them) is the pure :mod:`gridctl.core.sitestate`; its names stay importable from here.
"""

from __future__ import annotations

import ssl

from gridctl.core.errors import GridctlError
from gridctl.core.inventory.model import Inventory
from gridctl.net.tls import TlsFileError, load_client_context


def load_site_contexts(inv: Inventory) -> dict[str, ssl.SSLContext]:
    """Each site's TLS context from its files (shared by sites that name the same ones)."""
    out: dict[str, ssl.SSLContext] = {}
    for site in inv.sites:
        if not site.tls:
            continue
        try:
            context = load_client_context(site.tls.ca, site.tls.cert, site.tls.key)
        except TlsFileError as exc:
            raise GridctlError(
                f"site {site.name}: {exc}", hint=f"fix tls_* in {site.file or 'its file'}"
            ) from None
        if context is not None:
            out[site.name] = context
    return out
