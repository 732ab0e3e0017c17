"""gridctl: operate an AI grid of GPU inference sites as one platform."""

__version__ = "0.1.0"
