"""The grid simulator: replay traffic against the inventory, through the same placement code.

A discrete-event simulation (a ``heapq`` of completions merged with the
time-sorted arrivals; simulated time, never the wall clock; randomness only from
seeded ``random.Random`` sources) of the inventory's sites: each model served by
its replicas (each with its own batch) behind a least-loaded balancer and a
bounded FIFO queue, time to first token and tokens per second from the GPU
table (:mod:`gridctl.core.placement.perf`, one source for the predictor, the lab and
the simulator) and the replica's load, times each site's hidden speed factor and
a per-request noise (:mod:`gridctl.lab.truth`; placement never reads them), the
network round trip from the placement latency model, and prefix-cache hits.

- :mod:`~gridctl.sim.profiles`: built-in traffic profiles and scenario files.
- :mod:`~gridctl.sim.traffic`: a profile -> the requests (a :class:`Workload`).
- :mod:`~gridctl.sim.trace`: a JSONL trace -> the requests.
- :mod:`~gridctl.sim.sites`: the inventory's sites as the simulator sees them.
- :mod:`~gridctl.sim.policy`: grid (the daemon's decision, calibrated online), central,
  nearest, round-robin; all through the Planner.
- :mod:`~gridctl.sim.engine`: the event loop.
- :mod:`~gridctl.sim.report`: figures per policy, the time series of the plot.
- :mod:`~gridctl.sim.compare`: the service ``gridctl sim`` calls.
- :mod:`~gridctl.sim.plot` / :mod:`~gridctl.sim.png`: the PNG, without plotting libraries.

Everything but ``compare``'s loaders and ``plot``'s file write is pure.
"""
