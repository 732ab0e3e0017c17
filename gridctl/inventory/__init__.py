"""The inventory on disk: loading, locking, atomic edits and the state beside it.

The pure model and schema live in ``gridctl.core.inventory``.
"""
