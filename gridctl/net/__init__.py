"""HTTP/1.1 on asyncio, without a framework: the server under the lab sites and the daemon
(``server``), and the daemon's pooled keep-alive client to the sites (``client``).

Both exist because the daemon's request path must cost little CPU (issue 6; bench/README.md
measures them against aiohttp and httpx). Neither parses HTTP by hand: every message either
reads goes through llhttp (``httptools``, issue 12) with its leniencies off; ``syntax`` holds
the limits and checks both sides add to it."""
