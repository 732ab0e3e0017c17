"""The pure core: the grid's semantics, with no I/O.

Everything under ``gridctl.core`` computes: the inventory's model and schema,
placement with its predictor and GPU performance table, the prefix model, the
circuit breaker, health classifiers and the metric-text parsers. It imports
only the standard library's computing modules, PyYAML's parser and
``gridctl.core`` itself: no sockets, processes, threads, clocks, files or
environment. The shell (cli, daemon, net, fleet, provision, lab, sim's runner)
does the I/O and calls down into it. ``tests/test_layout.py`` holds the rule.
See docs/ARCHITECTURE.md.
"""
