"""The commented starter inventory written by ``gridctl init``."""

from __future__ import annotations

GRID_YAML = """\
# grid.yaml: the grid as a whole. Keep this directory in git; it is the source of truth.
# Reference: the "Inventory" section of gridctl's README.
name: my-grid

defaults:
  ssh:
    user: gridops            # SSH user on the nodes (a node may override it)
    port: 22
    # key: ~/.ssh/gridops_ed25519   # private key file; without it the SSH agent is used
  slo_ms: 500                # default end-to-end latency target for routing
  weights:                   # how placement scores eligible sites (higher = more important)
    latency: 0.6
    cost: 0.25
    headroom: 0.15

# Client regions: where requests come from, and where their data may be served.
regions:
  - name: us-east
    location: {lat: 40.71, lon: -74.01}
    jurisdiction: US
    allowed_jurisdictions: [US]
  - name: eu-de
    location: {lat: 50.11, lon: 8.68}
    jurisdiction: DE
    allowed_jurisdictions: [EU]   # EU expands to the 27 member states: data stays in the EU
"""

SITE_YAML = """\
# One file per site; the file name is the site name.
name: nyc-edge-01
kind: edge                   # regional-pop | central-office | edge | cloud
region: us-east              # a client region from grid.yaml
jurisdiction: US             # ISO 3166-1 alpha-2
location: {lat: 40.75, lon: -73.99}
endpoint: https://nyc-edge-01.example.net   # OpenAI-compatible base URL
api_key_env: GRID_KEY_NYC_EDGE_01           # name of the env var with the API key (never the key)
cost_per_gpu_hour: 0.70
drain: false
labels:
  tier: edge
models:
  - name: llama-3.1-8b-instruct
    capacity: 16             # concurrent requests
nodes:
  - name: nyc-edge-01-gpu-01
    host: 192.0.2.10
    gpus: {model: L4, count: 2}
"""

KNOWN_HOSTS = """\
# Pinned SSH host keys of the nodes. `gridctl node trust TARGET` adds them after showing fingerprints.
"""

GITIGNORE = """\
.gridctl.lock
.state/
"""

FILES = {
    "grid.yaml": GRID_YAML,
    "sites/nyc-edge-01.yaml": SITE_YAML,
    "known_hosts": KNOWN_HOSTS,
    ".gitignore": GITIGNORE,
}
