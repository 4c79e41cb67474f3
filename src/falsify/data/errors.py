"""The data package's error, in a module of its own so that every module of ``falsify.data``
can raise it without importing another (``pairs`` imports ``sklearn_lfw``, which raises it too)."""
from __future__ import annotations


class DataError(ValueError):
    """Pair data that cannot be used as given; the message says what to change."""
