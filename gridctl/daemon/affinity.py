"""KV-cache affinity and session stickiness. Pure.

The prefix index is approximate, like the endpoint pickers of llm-d and
SGLang's router: a prompt is cut into fixed-size blocks of characters, each
block's hash chained with the previous one's, so two prompts share a hash at
block i exactly when their first i+1 blocks are equal. Each site keeps a
bounded LRU of the chained hashes it recently served; the site holding the
longest matching chain probably has that prefix in its KV cache.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence


def prefix_hashes(text: str, block: int, max_blocks: int = 64) -> list[bytes]:
    """Chained hashes of the complete blocks of ``text`` (a trailing partial block is ignored)."""
    out: list[bytes] = []
    prev = b""
    data = text.encode("utf-8", "surrogatepass")
    for i in range(0, min(len(data) // block, max_blocks)):
        prev = hashlib.blake2b(prev + data[i * block : (i + 1) * block], digest_size=12).digest()
        out.append(prev)
    return out


class PrefixIndex:
    """Per site: the chained prefix hashes it served recently (bounded LRU)."""

    def __init__(self, capacity_per_site: int = 50_000) -> None:
        self.capacity = capacity_per_site
        self._sites: dict[str, OrderedDict[bytes, None]] = {}

    def record(self, site: str, hashes: Sequence[bytes]) -> None:
        lru = self._sites.setdefault(site, OrderedDict())
        for h in hashes:
            lru[h] = None
            lru.move_to_end(h)
        while len(lru) > self.capacity:
            lru.popitem(last=False)

    def match(self, site: str, hashes: Sequence[bytes]) -> int:
        """How many leading blocks of the prompt the site probably holds."""
        lru = self._sites.get(site)
        if not lru:
            return 0
        n = 0
        for h in hashes:
            if h not in lru:
                break
            n += 1
        return n

    def forget(self, keep: Iterable[str]) -> None:
        keep = set(keep)
        for site in list(self._sites):
            if site not in keep:
                del self._sites[site]
