"""How fast a simulated site *really* is: the GPU table's row times a hidden per-site factor,
with noise on each request. Pure (the seed and the random source are parameters).

The lab's sites and the simulator time requests this way; placement never reads it. It sees
only the table, the request and what it observes, so a predictor that merely read the
simulator's own timing could not pass: it has to learn each site's factor online.

- ``speed_factor(seed, site)``: a site's time multiplier, uniform in [SPEED_MIN, SPEED_MAX]
  (0.6-1.4: a site up to 40% faster or slower than its row: clocks, drivers, thermal limits,
  noisy neighbours), the same for a given seed and site name on every run and in every process;
  seed None (``lab up --hidden-speed off``): 1.0, the table exactly.
- ``noise(rnd)``: each request's own multiplier, log-normal with sigma NOISE_SIGMA (5%).
"""

from __future__ import annotations

import hashlib
import math
import random

SPEED_MIN = 0.6
SPEED_MAX = 1.4
NOISE_SIGMA = 0.05
DEFAULT_SEED = 1


def speed_factor(seed: int | None, site: str) -> float:
    if seed is None:
        return 1.0
    digest = hashlib.blake2b(f"{seed}\0{site}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    return SPEED_MIN + (SPEED_MAX - SPEED_MIN) * u


def noise(rnd: random.Random, sigma: float = NOISE_SIGMA) -> float:
    return math.exp(rnd.gauss(0.0, sigma)) if sigma > 0 else 1.0
