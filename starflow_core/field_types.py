"""Type checks for the configuration dataclasses (FlowConfig, TrainConfig, GenerationSettings).

Values come from JSON, YAML and `--set key=value`, so a field can arrive as the wrong
type: `"channels": "128"`, `train.steps=abc`, `train.betas=0.9`. Without a check these
fail much later with a TypeError deep inside. `check_field_types` compares every field
with its annotation and raises a ValueError naming the field, the value and the type
wanted; floats must be finite (an infinite learning rate is never meant).

Conversions that lose nothing are made: an integer for a float field, an integral float
for an int field (1e3 -> 1000), 0/1 for a bool field (official configs write rope: 1),
a list for a tuple field, and a numeric string for a float field (YAML 1.1 reads 1e-4,
without a dot, as a string).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any


class _Mismatch(Exception):
    """The value does not fit the annotation; the message says what was wanted."""


def check_field_types(instance: Any) -> None:
    """Check (and losslessly convert, in place) every field of a frozen dataclass instance."""
    cls = type(instance)
    hints = _type_hints(cls)
    for field in dataclasses.fields(cls):
        value = getattr(instance, field.name)
        try:
            converted = _convert(value, hints[field.name])
        except _Mismatch as wanted:
            raise ValueError(f"{cls.__name__}.{field.name}={value!r}: must be {wanted}") from None
        if converted is not value:
            object.__setattr__(instance, field.name, converted)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, annotation: Any) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _convert(value, option)
            except _Mismatch:
                continue
        raise _Mismatch(" or ".join(_describe(a) for a in options) + (" or null" if len(args) > 1 else ""))
    if origin is tuple:
        return _convert_tuple(value, args)
    if annotation is bool:
        return _convert_bool(value)
    if annotation is int:
        return _convert_int(value)
    if annotation is float:
        return _convert_float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise _Mismatch("a string")
        return value
    return value  # a type this checker does not know: left to the class's own validation


def _convert_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _Mismatch("true or false")


def _convert_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Mismatch("an integer (not true/false)")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise _Mismatch("an integer")


def _convert_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _Mismatch("a number (not true/false)")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _Mismatch("a number") from None
    if not isinstance(value, int | float):
        raise _Mismatch("a number")
    if not math.isfinite(value):
        raise _Mismatch("a finite number")
    return float(value)  # stored as a float, as config.json writes it


def _convert_tuple(value: Any, args: tuple) -> tuple:
    if not isinstance(value, list | tuple):
        raise _Mismatch(_describe(tuple[args]))
    if len(args) == 2 and args[1] is Ellipsis:
        items = [_convert(item, args[0]) for item in value]
    else:
        if len(value) != len(args):
            raise _Mismatch(_describe(tuple[args]))
        items = [_convert(item, arg) for item, arg in zip(value, args, strict=True)]
    return tuple(items)


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_PLURALS.get(args[0], 'values')}"
        return f"a list of {len(args)} {_PLURALS.get(args[0], 'values')}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


_PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
