"""The functional core: pure modules (no I/O, no clock, no randomness but what is passed in)."""
