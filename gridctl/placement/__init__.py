"""Pure placement: which sites may and should serve a request, and why.

No sockets, files, clock or randomness here: the daemon, ``route test``,
``route render`` and the simulator all call this same code.
"""
