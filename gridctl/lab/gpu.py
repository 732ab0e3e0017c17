"""A lab site's model of its GPUs: per model it serves, the replicas and their queue, the prefix
cache, the KV blocks in use and vLLM's counters, and a request's true timing when it takes a slot.

Timing (:mod:`gridctl.core.placement.perf`, on the replica's own load; ``truth`` is the site's hidden
speed times the request's noise, from the caller)::

    ttft     = perf.ttft_ms(gpu, prompt, cached, running_on_replica, replica_slots) x factor x truth
    interval = perf.token_interval_ms(gpu, running_on_replica, replica_slots) x factor x truth

The prefix cache is :class:`gridctl.core.placement.prefix.PrefixCache` of the prompt's text in blocks of
``BLOCK_TOKENS`` (vLLM's default), sized by the KV tokens of the GPUs serving the model.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from gridctl.core.placement.perf import CHARS_PER_TOKEN, Serving, token_interval_ms, ttft_ms
from gridctl.core.placement.prefix import PrefixCache, reusable_tokens, text_chain
from gridctl.lab.formats import Completion

BLOCK_TOKENS = 16  # vLLM's default KV block
BLOCK_CHARS = BLOCK_TOKENS * CHARS_PER_TOKEN


class Replicas:
    """A model's replicas, each with its own slots and running count, and one FIFO queue of
    waiters beyond all of them. :meth:`acquire` returns the replica's index."""

    def __init__(self, slots: Sequence[int]) -> None:
        if not slots or min(slots) < 1:
            raise ValueError("every replica needs at least one slot")
        self.slots = tuple(slots)
        self.running_on = [0] * len(self.slots)
        self._waiters: deque[asyncio.Future[int]] = deque()

    @property
    def capacity(self) -> int:
        return sum(self.slots)

    @property
    def running(self) -> int:
        return sum(self.running_on)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _least_running(self) -> int | None:
        """The free replica with the fewest running (ties: the first), None when all are full."""
        best: int | None = None
        for i, (running, slots) in enumerate(zip(self.running_on, self.slots, strict=True)):
            if running < slots and (best is None or running < self.running_on[best]):
                best = i
        return best

    async def acquire(self) -> int:
        if not self._waiters:
            free = self._least_running()
            if free is not None:
                self.running_on[free] += 1
                return free
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # a slot was handed to us as we left: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self, replica: int) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(replica)  # the freed slot goes straight to the next in line
                return
        self.running_on[replica] -= 1


@dataclass
class ModelStats:
    requests: int = 0
    success: dict[str, int] = field(default_factory=lambda: {"stop": 0, "length": 0})
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0  # of which found


class ModelState:
    """One model at the site: how it is served, its replicas, prefix cache, KV use and counters."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self.replicas = Replicas(serving.replica_slots())
        self.stats = ModelStats()
        self.kv_blocks = max(1, serving.kv_tokens // BLOCK_TOKENS)
        self.kv_used = 0
        self.cache = PrefixCache(self.kv_blocks * BLOCK_TOKENS)

    @property
    def kv_usage(self) -> float:
        return self.kv_used / self.kv_blocks

    def admit(self, c: Completion, replica: int, truth: float, extra_ms: float = 0.0) -> Admission:
        """``c`` takes its slot on ``replica`` (already acquired): look up the prefix cache and
        compute its timing from that replica's load, times ``truth``; ``extra_ms`` added to its
        TTFT (the lab's ``slow`` failure mode)."""
        st, sv = self.stats, self.serving
        held = self.cache.lookup(text_chain(c.prompt, BLOCK_CHARS, BLOCK_TOKENS))
        cached = reusable_tokens(held, c.prompt_tokens)
        st.prompt_tokens += c.prompt_tokens
        st.prefix_queries += c.prompt_tokens
        st.prefix_hits += cached
        running, slots = self.replicas.running_on[replica], self.replicas.slots[replica]
        scale = sv.factor * truth
        first = ttft_ms(sv.gpu, c.prompt_tokens, cached, running, slots) * scale
        if extra_ms:
            first += extra_ms
        interval = token_interval_ms(sv.gpu, running, slots) * scale
        blocks = -(-(c.prompt_tokens + c.max_tokens) // BLOCK_TOKENS)
        self.kv_used += blocks
        return Admission(replica, first, interval, cached, blocks)

    def leave(self, replica: int, adm: Admission | None) -> None:
        """The request on ``replica`` is done (its admission None when it never got one)."""
        self.replicas.release(replica)
        if adm is not None:
            self.kv_used -= adm.blocks

    def finish(self, c: Completion, n_tokens: int) -> None:
        """``c`` answered with ``n_tokens`` tokens: counted as generated and successful."""
        st = self.stats
        st.generation_tokens += n_tokens
        st.success[c.finish_reason] = st.success.get(c.finish_reason, 0) + 1


@dataclass(frozen=True)
class Admission:
    """A request's slot and true timing, fixed when it took the slot."""

    replica: int
    ttft_ms: float
    interval_ms: float
    cached: int
    blocks: int
