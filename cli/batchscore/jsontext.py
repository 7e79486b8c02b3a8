"""JSON text read by one rule, wherever it comes from: JSON-lines input lines, HTTP and Feast
answers.

orjson reads it (the hot path).  What orjson refuses is read again by the standard library, for
two things JSON writers do send: numbers beyond the double range (``1e400``, ``-1e400``) and
Python's ``NaN``/``Infinity``/``-Infinity`` (``json.dumps`` writes them by default).  Both are
read as ``null``: a missing value, as the model's conversion rule
(:class:`~batchscore.model.Encoder`) makes any value that is not a finite number, instead of
rejecting the whole line or answer they are in.  Anything else refused (not UTF-8, not JSON, a
lone surrogate, nesting too deep) is a ValueError.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson


def loads(content: bytes) -> Any:
    """``content`` as JSON, numbers beyond the double range and NaN/Infinity as None; a
    ValueError for anything that is not JSON text."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        pass
    try:
        value = json.loads(
            content.decode("utf-8"), parse_float=_finite_or_none, parse_constant=_none
        )
        _check_text(value)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
    return value  # UnicodeError and JSONDecodeError are ValueErrors already


def _finite_or_none(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def _none(_constant: str) -> None:
    return None


def _check_text(body: Any) -> None:
    """Raise UnicodeEncodeError (a ValueError) for a string that is not text (a lone surrogate
    escape, which orjson refuses and the standard library lets through)."""
    stack = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            value.encode("utf-8")
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


__all__ = ["loads"]
