"""Placement, pure: the engine, its predictor, the GPU performance table, latency and the prefix model."""
