"""How counts read in messages, the summary and the progress display (one rule everywhere).

The lowest of batchscore's modules beside :mod:`batchscore.errors`: anything may import it.
"""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """A count and its noun, singular for one: ``1 request``, ``2 requests``, ``5,010 IDs``."""
    return f"{count:,} {noun if count == 1 else (plural or noun + 's')}"


__all__ = ["counted"]
