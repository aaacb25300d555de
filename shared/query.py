"""Query-string integers of the HTTP entry points (``api``, ``dashboard``): one rule for a
value in a range, and one error naming the parameter when it is not."""

from __future__ import annotations

from shared.errors import InvalidRequest


def bounded_int(text: str | None, name: str, low: int, high: int, default: int) -> int:
    """``text`` as an integer in ``[low, high]``; ``default`` when absent.

    Raises:
        InvalidRequest: not an integer, or out of the range (the message names ``name``).
    """
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be an integer between {low} and {high}", param=name)
    return value
