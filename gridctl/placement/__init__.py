"""Data-plane configs from placement: the routing table rendered for nginx, HAProxy and Envoy.

The decision itself is pure and lives in ``gridctl.core.placement``; this package writes it out.
"""
