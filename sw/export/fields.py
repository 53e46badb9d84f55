"""Strict checkers of JSON manifest fields: each names the field it rejects.

Every checker takes the value and its field path (``manifest.layers[3].stride``) and
returns the value, or raises :class:`~velcro.sw.errors.PackageError` naming the path and
what was expected. Used by :mod:`velcro.sw.export.schema`; NumPy-free.
"""

from __future__ import annotations

import math
import re

from ..errors import PackageError

#: Largest array, in bytes, and largest dimension a package may declare.
MAX_ARRAY_BYTES = 1 << 30
MAX_DIM = 1 << 16
#: Layer and tap names.
NAME = re.compile(r"[A-Za-z0-9_.#-]{1,128}")


def show(value) -> str:
    """``repr(value)``, cut to 60 characters, for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fail(path: str, message: str):
    """Raise a :class:`~velcro.sw.errors.PackageError` about the field (or member) ``path``."""
    raise PackageError(f"{path}: {message}")


def keys(value, path: str, required: set[str]) -> dict:
    if not isinstance(value, dict):
        fail(path, f"expected an object, got {type(value).__name__}")
    missing = sorted(required - value.keys())
    extra = sorted(value.keys() - required)
    if missing:
        fail(path, f"missing field {show(missing[0])}")
    if extra:
        fail(f"{path}.{extra[0][:40]}", "unknown field")
    return value


def integer(value, path: str, lo: int, hi: int) -> int:
    if type(value) is not int:
        fail(path, f"expected an integer, got {show(value)}")
    if not lo <= value <= hi:
        fail(path, f"expected an integer in [{lo}, {hi}], got {value}")
    return value


def boolean(value, path: str) -> bool:
    if type(value) is not bool:
        fail(path, f"expected true or false, got {show(value)}")
    return value


def number(value, path: str, lo: float = 0.0, hi: float = math.inf,
           lo_open: bool = False) -> float:
    number = value
    if type(value) is int:
        # Python ints are unbounded; float() of a huge one raises OverflowError.
        number = float(value) if abs(value) < 1 << 1000 else math.inf
    if type(value) not in (int, float) or not math.isfinite(number):
        fail(path, f"expected a finite number, got {show(value)}")
    if number < lo or number > hi or (lo_open and number == lo):
        bracket = "(" if lo_open else "["
        fail(path, f"expected a number in {bracket}{lo}, {hi}], got {show(value)}")
    return number


def string(value, path: str, pattern: re.Pattern | None = None, nullable: bool = False):
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        fail(path, f"expected a string, got {show(value)}")
    if pattern is not None and not pattern.fullmatch(value):
        fail(path, f"expected a string matching {pattern.pattern}, got {show(value)}")
    return value


def items(value, path: str, max_len: int) -> list:
    if not isinstance(value, list):
        fail(path, f"expected a list, got {type(value).__name__}")
    if len(value) > max_len:
        fail(path, f"expected at most {max_len} entries, got {len(value)}")
    return value


def shape(value, path: str, ndim: int) -> tuple[int, ...]:
    value = items(value, path, ndim)
    if len(value) != ndim:
        fail(path, f"expected {ndim} dimensions, got {len(value)}")
    return tuple(integer(v, f"{path}[{i}]", 1, MAX_DIM) for i, v in enumerate(value))


def choice(value, path: str, options: tuple):
    if not any(value == o and type(value) is type(o) for o in options):
        fail(path, f"expected one of {', '.join(map(repr, options))}, got {show(value)}")
    return value


def expect(value, path: str, expected):
    if value != expected or type(value) is not type(expected):
        fail(path, f"expected {expected!r}, got {show(value)}")
    return value


# The field checkers the op table (:mod:`velcro.sw.export.ops`) calls.
