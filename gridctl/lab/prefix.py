"""An approximate prefix cache: an LRU of chained hashes of prompt blocks.

Like vLLM's automatic prefix caching, a prompt is cut into fixed blocks
(``BLOCK_CHARS`` characters, about 16 tokens, vLLM's default block); block i
is identified by the hash of block i chained with the hash of every block
before it, so a hit means the whole prefix up to that block is the same. Only
full blocks are cached. A lookup counts the leading blocks already present
(the cached prefix), then records every block of the prompt as most recently
used, evicting the least recently used blocks beyond ``capacity_blocks``.

Hashes are Python's ``hash`` of (previous, text): stable within a process,
which is all one site needs.
"""

from __future__ import annotations

from collections import OrderedDict

from gridctl.placement.perf import CHARS_PER_TOKEN

BLOCK_TOKENS = 16
BLOCK_CHARS = BLOCK_TOKENS * CHARS_PER_TOKEN


class PrefixCache:
    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = max(1, capacity_blocks)
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, prompt: str) -> int:
        """Tokens of ``prompt``'s prefix already cached; then cache all of its full blocks."""
        blocks = self._blocks
        h, hit, matching = 0, 0, True
        for i in range(0, len(prompt) - BLOCK_CHARS + 1, BLOCK_CHARS):
            h = hash((h, prompt[i : i + BLOCK_CHARS]))
            if matching and h in blocks:
                blocks.move_to_end(h)
                hit += 1
                continue
            matching = False
            blocks[h] = None
            if len(blocks) > self.capacity:
                blocks.popitem(last=False)
        return hit * BLOCK_TOKENS
