"""Reaching the nodes of the grid over SSH: sessions, host keys, fan-out."""
