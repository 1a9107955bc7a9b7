"""Argument checks: one home for the validators of models, data, training and notebook parameters.

Each check returns the value in its canonical Python type (``int``, ``float``, ``tuple``) or raises
one ``ValueError`` that names the argument, shows the value and says what is allowed, e.g.
``epochs=2.5 must be a positive integer.`` Booleans are never numbers here (``True`` is an ``int``
in Python, never a count or a rate a user meant). This module imports only NumPy, so every layer of
``support`` may use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

BINARIZATIONS = ("none", "static", "dynamic")


def is_int(value) -> bool:
    """An integer of Python or NumPy, not a boolean."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value) -> bool:
    """A real number of Python or NumPy (int or float, finite or not), not a boolean."""
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)))


def integer(value, name: str, *, minimum: int | None = None, maximum: int | None = None,
            allow_none: bool = False, error=ValueError, note: str = "") -> int | None:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (either bound may be open), or ``None``
    where ``allow_none``. ``error`` is the exception class raised (``ValueError`` or a subclass);
    ``note`` is added to its message in parentheses (what the bounds are)."""
    if value is None and allow_none:
        return None
    low_ok = minimum is None or (is_int(value) and value >= minimum)
    high_ok = maximum is None or (is_int(value) and value <= maximum)
    if not is_int(value) or not low_ok or not high_ok:
        if minimum == 1 and maximum is None:
            wanted = "a positive integer"
        elif minimum is not None and maximum is not None:
            wanted = f"an integer in [{minimum}, {maximum}]"
        elif minimum is not None:
            wanted = f"an integer >= {minimum}"
        elif maximum is not None:
            wanted = f"an integer <= {maximum}"
        else:
            wanted = "an integer"
        note = f" ({note})" if note else ""
        raise error(f"{name}={value!r} must be {wanted}{' or None' if allow_none else ''}{note}.")
    return int(value)


def positive_int(value, name: str, allow_none: bool = False) -> int | None:
    """``value`` as an ``int >= 1`` (or ``None`` where ``allow_none``)."""
    return integer(value, name, minimum=1, allow_none=allow_none)


def number(value, name: str, *, positive: bool = False, non_negative: bool = False,
           allow_none: bool = False) -> float | None:
    """``value`` as a finite ``float``; ``positive``: ``> 0``, ``non_negative``: ``>= 0``."""
    if value is None and allow_none:
        return None
    ok = is_number(value) and math.isfinite(value)
    if ok and positive:
        ok = value > 0
    if ok and non_negative:
        ok = value >= 0
    if not ok:
        kind = "a positive " if positive else "a non-negative " if non_negative else "a "
        raise ValueError(f"{name}={value!r} must be {kind}finite number{' or None' if allow_none else ''}.")
    return float(value)


def positive_float(value, name: str, allow_zero: bool = False) -> float:
    """``value`` as a finite ``float > 0`` (``>= 0`` where ``allow_zero``)."""
    return number(value, name, positive=not allow_zero, non_negative=allow_zero)


def fraction(value, name: str) -> float:
    """``value`` as a ``float`` in ``[0, 1)`` (a dropout rate, an Adam beta)."""
    if not (is_number(value) and 0 <= value < 1):
        raise ValueError(f"{name}={value!r} must be a number in [0, 1).")
    return float(value)


def choice(value, allowed: Iterable[str], name: str, error=ValueError):
    """``value`` itself, when it is one of ``allowed``."""
    allowed = tuple(allowed)
    try:
        ok = value in allowed
    except TypeError:  # an unhashable value compared against a set-like ``allowed``
        ok = False
    if not ok:
        raise error(f"{name}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}.")
    return value


def binarization(value, name: str = "binarization") -> str:
    """One of :data:`BINARIZATIONS`: ``"none"`` (grey levels), ``"static"`` (one Bernoulli draw
    per pixel, fixed) or ``"dynamic"`` (fresh draws for every batch)."""
    return choice(value, BINARIZATIONS, name)


def image_shape(value, name: str) -> tuple[int, int, int]:
    """``value`` as ``(height, width, channels)``, three positive ints."""
    ok = isinstance(value, (tuple, list)) and len(value) == 3 and all(is_int(v) and v >= 1 for v in value)
    if not ok:
        raise ValueError(
            f"{name}={value!r} must be an image shape (height, width, channels) of positive ints."
        )
    return tuple(int(v) for v in value)


def widths(value, name: str) -> tuple[int, ...]:
    """``value`` as a tuple of positive ints (layer widths; ``()`` allowed)."""
    if not isinstance(value, (tuple, list)):
        raise ValueError(f"{name}={value!r} must be a tuple of positive integers.")
    return tuple(positive_int(v, name) for v in value)
