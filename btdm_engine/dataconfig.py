"""Config dataclasses as JSON: one strict round trip, and the value checks their fields share.

The project's configs (noise schedule, networks, training, synthetic-data recipes and character
specs, the dataset manifest) are frozen dataclasses, some nested, saved as JSON and read back.
This module is the one place that does it:

* :func:`to_dict`: JSON-ready data; nested dataclasses become objects, tuples become lists.
* :func:`from_dict`: the inverse. Unknown keys are refused and required ones must be there
  (:func:`check_keys`); a field typed as a dataclass, ``tuple[...]`` or ``X | None`` is rebuilt from
  its JSON form, recursively. The class's ``__post_init__`` then checks the values, so a config
  made in code and one read from a file pass the same checks.
* ``check_*``: those value checks (an int that is not a bool, a finite number in a range, a bool,
  one of the allowed names, a fixed-length list of numbers). Each raises the caller's error class
  with a message naming the field and the value.

Standard library only, so ``btdm --help`` and Blender's Python import it at no cost.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_keys",
    "check_number",
    "check_numbers",
    "from_dict",
    "is_int",
    "is_number",
    "option",
    "to_dict",
]

T = TypeVar("T")
ErrorClass = Callable[[str], Exception]
Listing = Callable[[list[str]], str]


# ------------------------------------------------------------------------------ fields
def option(
    default: Any = dataclasses.MISSING, *, help: str, choices: Collection[str] | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field that documents itself: ``help`` (and ``choices``) go into its metadata.

    A command line can then offer the field as a flag with that help (``btdm train`` does), and
    ``__post_init__`` can check ``choices`` where they are declared.
    """
    metadata = {"help": help} if choices is None else {"help": help, "choices": tuple(choices)}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


# ------------------------------------------------------------------------------ JSON round trip
def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass instance as JSON-ready data: nested dataclasses become dicts, tuples lists."""
    return {f.name: _to_json(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def from_dict(
    cls: type[T], doc: Any, error: ErrorClass, *, where: str | None = None, noun: str = "field",
    listing: Listing = ", ".join,
) -> T:
    """Build the dataclass ``cls`` from :func:`to_dict`'s output.

    Args:
        cls: a dataclass; fields without a default are required in ``doc``.
        doc: the parsed JSON.
        error: the caller's error class, raised for every problem found here.
        where: names the object in messages (``"character.hair"``, a file); nested objects and
            list items extend it (``"character.garments[0].cloth"``).
        noun, listing: how :func:`check_keys` words unknown and missing keys.
    """
    values = check_keys(doc, cls, error, where=where, noun=noun, listing=listing)
    types_ = _field_types(cls)
    return cls(**{
        name: _from_json(types_[name], value, error, f"{where}.{name}" if where else name, noun, listing)
        for name, value in values.items()
    })  # fmt: skip


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _from_json(tp: Any, value: Any, error: ErrorClass, where: str, noun: str, listing: Listing) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or len(options) != 1:
            return value
        return _from_json(options[0], value, error, where, noun, listing)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, error, where=where, noun=noun, listing=listing)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise error(f"{where} must be a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            item_types = [args[0]] * len(value)
        elif len(args) == len(value):
            item_types = list(args)
        else:  # a wrong length: the class's own check says what it expects
            return tuple(value)
        return tuple(
            _from_json(t, v, error, f"{where}[{i}]", noun, listing) for i, (t, v) in enumerate(zip(item_types, value))
        )
    return value


def check_keys(
    doc: Any, allowed: type | Collection[str], error: ErrorClass, *, where: str | None = None, noun: str = "field",
    required: Collection[str] = (), listing: Listing = ", ".join,
) -> dict[str, Any]:
    """``doc`` as a new dict, once it is a mapping with no unknown and no missing keys.

    ``allowed`` is a dataclass (its fields are allowed, those without a default required) or the
    allowed names (``required`` then lists the required ones). Messages read
    ``"<where>: unknown <noun>(s) a, b; allowed: ..."`` and ``"<where>: missing <noun>(s) ..."``
    (``listing`` joins the names).
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(doc, Mapping):
        raise error(f"{prefix}expected a JSON object of {noun}s, got {type(doc).__name__}")
    if isinstance(allowed, type):
        fields = dataclasses.fields(allowed)  # type: ignore[arg-type]
        names = {f.name for f in fields}
        required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    else:
        names = set(allowed)
    unknown = sorted(set(doc) - names)
    if unknown:
        raise error(f"{prefix}unknown {noun}(s) {listing(unknown)}; allowed: {listing(sorted(names))}")
    missing = sorted(set(required) - set(doc))
    if missing:
        raise error(f"{prefix}missing {noun}(s) {listing(missing)}")
    return dict(doc)


# ------------------------------------------------------------------------------ value checks
def is_int(value: Any, *, numpy: bool = False) -> bool:
    """An int that is not a bool; with ``numpy=True`` numpy's integer scalars count too."""
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral if numpy else int)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(
    value: Any, name: str, error: ErrorClass, *, lo: int | None = None, hi: int | None = None, numpy: bool = False
) -> int:
    """``value`` when it is an int (not a bool) in [lo, hi], else ``error("<name> must be an int ...")``."""
    if not is_int(value, numpy=numpy) or (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f" in [{lo}, {hi}]" if lo is not None and hi is not None else (
            f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else "")
        raise error(f"{name} must be an int{bounds}, got {value!r}")
    return int(value)


def check_number(
    value: Any, name: str, error: ErrorClass, *, lo: float = -math.inf, hi: float = math.inf,
    lo_open: bool = False, hi_open: bool = False,
) -> float:
    """``float(value)`` when it is a finite int or float (not a bool) in the range, else ``error(...)``."""
    ok = is_number(value) and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        raise error(f"{name} must be {_range(lo, hi, lo_open, hi_open)}, got {value!r}")
    return float(value)


def check_numbers(
    value: Any, name: str, error: ErrorClass, *, length: int, lo: float = -math.inf, hi: float = math.inf,
    hi_open: bool = False,
) -> tuple[float, ...]:
    """A list or tuple of ``length`` numbers in [lo, hi] (or [lo, hi)) as a tuple of floats."""
    ok = isinstance(value, (list, tuple)) and len(value) == length and all(
        is_number(v) and v >= lo and (v < hi if hi_open else v <= hi) for v in value)
    if not ok:
        raise error(f"{name} must be {length} numbers in [{lo}, {hi}{')' if hi_open else ']'}, got {value!r}")
    return tuple(float(v) for v in value)


def check_bool(value: Any, name: str, error: ErrorClass) -> bool:
    """``value`` when it is True or False, else ``error("<name> must be true or false, got ...")``."""
    if not isinstance(value, bool):
        raise error(f"{name} must be true or false, got {value!r}")
    return value


def check_choice(value: Any, name: str, allowed: Collection[str], error: ErrorClass) -> str:
    """``value`` when it is one of ``allowed``, else ``error("unknown <name> 'x'; allowed: a, b")``."""
    if not isinstance(value, str) or value not in allowed:
        raise error(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
    return value


def _range(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    if math.isinf(lo) and math.isinf(hi):
        return "a finite number"
    if math.isinf(hi):
        return f"a finite number {'>' if lo_open else '>='} {lo}"
    if math.isinf(lo):
        return f"a finite number {'<' if hi_open else '<='} {hi}"
    return f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
