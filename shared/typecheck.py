"""A shallow runtime check of decoded values against type annotations (the protocol's fields).

Lists, dicts, unions, TypedDict records; ints are not bools.  Cached per class.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

_FIELDS_CACHE: dict[type, tuple[dataclasses.Field[Any], ...]] = {}
_HINTS_CACHE: dict[type, dict[str, Any]] = {}


def fields_of(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    if cls not in _FIELDS_CACHE:
        _FIELDS_CACHE[cls] = tuple(f for f in dataclasses.fields(cls) if f.name != "blobs")
    return _FIELDS_CACHE[cls]


def hints_of(cls: type) -> dict[str, Any]:
    if cls not in _HINTS_CACHE:
        _HINTS_CACHE[cls] = typing.get_type_hints(cls)
    return _HINTS_CACHE[cls]


def conforms(value: Any, hint: Any) -> bool:
    """Shallow type check of a decoded value against a field annotation."""
    return conforms_to(hint)(value)


def _compile(hint: Any) -> typing.Callable[[Any], bool]:
    """A check for the common plain hints (decode runs one per field of every message);
    everything else goes through `_conforms`."""
    if hint in (str, bytes, bool):
        return lambda v: isinstance(v, hint)
    if hint is int:
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and args and args[0] in (str, bytes):
        item = args[0]
        return lambda v: isinstance(v, list) and all(isinstance(x, item) for x in v)
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        other = conforms_to(args[0] if args[1] is type(None) else args[1])
        return lambda v: v is None or other(v)
    return lambda v: _conforms(v, hint)


def conforms_to(hint: Any) -> typing.Callable[[Any], bool]:
    """The check `conforms` runs for `hint`, made once per hint."""
    try:
        check = _CHECKS.get(hint)
        if check is None:
            check = _CHECKS[hint] = _compile(hint)
    except TypeError:  # an unhashable hint: checked the long way
        return lambda v: _conforms(v, hint)
    return check


def _conforms(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(conforms(v, item) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is list:
        return isinstance(value, list)
    if hint is Any:
        return True
    if typing.is_typeddict(hint):
        return isinstance(value, dict) and _recordconforms(value, hint)
    return isinstance(value, hint)


def _recordconforms(value: dict[str, Any], record: Any) -> bool:
    """Every required key of the TypedDict present, and every known key of its type."""
    hints = _RECORD_HINTS.get(record)
    if hints is None:
        hints = _RECORD_HINTS[record] = typing.get_type_hints(record)
    if not record.__required_keys__ <= value.keys():
        return False
    return all(conforms(value[k], h) for k, h in hints.items() if k in value)


_RECORD_HINTS: dict[Any, dict[str, Any]] = {}
_CHECKS: dict[Any, typing.Callable[[Any], bool]] = {}
