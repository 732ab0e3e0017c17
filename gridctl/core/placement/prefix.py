"""The one prefix-cache model: the daemon's index, the lab's sites and the simulator use it. Pure.

A prompt is a *chain* of runs: ``(key, tokens)`` pairs, where a key names a run
*and everything before it* (like vLLM's automatic prefix caching, whose block
hashes chain each block to the ones before it). A :class:`PrefixCache` holds,
per key, how many of that run's tokens it has; a lookup counts the tokens of
the leading runs it holds, stopping at the first run missing or held only in
part. It is an LRU bounded by tokens: inserting a chain marks every run most
recently used (growing a run that was held in part) and evicts the least
recently used runs beyond ``capacity_tokens``.

What the runs are is the caller's, and the only difference between users:

- text (daemon, lab): :func:`text_chain` cuts a prompt into fixed blocks of
  characters, each one run keyed by the hash of its bytes chained with the
  previous block's hash, so two prompts share a key at block i exactly when
  their first i+1 blocks are equal. A trailing partial block is not cached.
- the simulator, whose requests have no text: a shared prefix is one run
  (keyed by its id) and a session's conversation beyond it one more (keyed by
  the session, chained after its prefix): a conversation only grows, so turn
  k's history is a leading part of what turn k-1 left cached.

Who holds the cache:

- a site (lab, simulator): what its GPUs' KV cache holds, ``lookup`` on admission, of which
  ``reusable_tokens`` are not computed again;
- the daemon (and the simulator's ``grid`` policy, which stands for it): per
  site, what it sent there, ``match`` when choosing and ``insert`` once it has
  chosen; the match is what ``Planner.order`` takes as the tokens a site
  probably holds.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence

Chain = Sequence[tuple[Hashable, int]]


def text_chain(
    text: str, block_chars: int, block_tokens: int, max_blocks: int | None = None
) -> list[tuple[bytes, int]]:
    """The chain of ``text``'s complete blocks of ``block_chars`` characters (at most
    ``max_blocks``), each worth ``block_tokens`` tokens."""
    data = text.encode("utf-8", "surrogatepass")
    n = len(data) // block_chars
    if max_blocks is not None and n > max_blocks:
        n = max_blocks
    out: list[tuple[bytes, int]] = []
    prev = b""
    blake = hashlib.blake2b
    for i in range(n):
        prev = blake(prev + data[i * block_chars : (i + 1) * block_chars], digest_size=12).digest()
        out.append((prev, block_tokens))
    return out


class PrefixCache:
    """An LRU of runs (key -> tokens held), bounded by the tokens it holds."""

    __slots__ = ("capacity", "used", "_runs")

    def __init__(self, capacity_tokens: int) -> None:
        self.capacity = max(1, capacity_tokens)
        self.used = 0  # tokens held
        self._runs: OrderedDict[Hashable, int] = OrderedDict()

    def __len__(self) -> int:
        """Runs held."""
        return len(self._runs)

    def match(self, chain: Chain) -> int:
        """Tokens of ``chain``'s leading runs held; nothing changes."""
        runs = self._runs
        n = 0
        for key, want in chain:
            have = runs.get(key)
            if have is None:
                break
            if have < want:
                return n + have
            n += want
        return n

    def insert(self, chain: Chain) -> None:
        """Every run of ``chain`` held (in full) and most recently used; the oldest evicted."""
        runs = self._runs
        used = self.used
        for key, want in chain:
            have = runs.get(key)
            if have is None:
                runs[key] = want
                used += want
            else:
                runs.move_to_end(key)
                if want > have:
                    runs[key] = want
                    used += want - have
        if used > self.capacity:
            limit = self.capacity
            while used > limit and runs:
                used -= runs.popitem(last=False)[1]
        self.used = used

    def lookup(self, chain: Chain) -> int:
        """What a site does on admission: the tokens held (``match``), then ``insert``."""
        n = self.match(chain)
        self.insert(chain)
        return n


def reusable_tokens(held: int, prompt_tokens: int) -> int:
    """The prompt tokens a site's hit of ``held`` tokens saves it: all but the prompt's last token,
    which a site always computes (vLLM does: it needs that token's logits)."""
    return max(0, min(held, prompt_tokens - 1))


class SentIndex:
    """Per (site, model), a :class:`PrefixCache` of what was sent there: the daemon's guess at what
    each site's KV cache holds for each model it serves (a prompt sent to one model is in no other
    model's cache). A cache holds at most ``capacity(site, model)`` tokens: what the GPUs serving
    that model can hold, so that the guess forgets about as fast as the site does."""

    __slots__ = ("capacity", "_caches")

    def __init__(self, capacity: Callable[[str, str], int]) -> None:
        self.capacity = capacity
        self._caches: dict[tuple[str, str], PrefixCache] = {}

    def record(self, site: str, model: str, chain: Chain) -> None:
        """``chain`` was sent to ``site`` for ``model``."""
        key = (site, model)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = PrefixCache(self.capacity(site, model))
        cache.insert(chain)

    def cached(self, model: str, chain: Chain, sites: Iterable[str]) -> dict[str, int]:
        """Site -> tokens of ``chain`` it probably holds for ``model``; sites holding none left out."""
        out: dict[str, int] = {}
        if not chain:
            return out
        caches = self._caches
        for name in sites:
            cache = caches.get((name, model))
            if cache is not None:
                n = cache.match(chain)
                if n:
                    out[name] = n
        return out

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the sites not in ``keep`` (after a reload removed them)."""
        keep = set(keep)
        for key in list(self._caches):
            if key[0] not in keep:
                del self._caches[key]
