"""Typed payloads and method arguments: attrs classes on the server, JSON on the wire.

The reference types a channel's payload (``ServerChannel<T>``) and checks
method arguments with zod. Here the types are attrs classes and the
converter is cattrs, the attrs project's own: ``ServerChannel("chat",
payload=ChatMessage)`` broadcasts instances and hands publish handlers
validated instances; a method whose ``args`` parameter is annotated with an
attrs class gets one. What comes from a client is *checked*, not coerced:
cattrs would turn ``5`` into ``"5"`` for a ``str`` field, so the scalar
hooks here refuse what is not already of the type. A refusal names every
failing field by its path (``text: expected str``).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import cattrs
import cattrs.cols
import cattrs.errors

__all__ = ["InvalidData", "args_type", "converter", "describe", "result_type", "structure", "unstructure"]

T = TypeVar("T")

#: The converter every typed channel and method uses. Register hooks on it for
#: your own types (``converter.register_structure_hook(...)``) before serving.
converter = cattrs.Converter(detailed_validation=True)


def _strict(kind: type, check: Callable[[Any], bool], name: str) -> None:
    def hook(value: Any, _: Any) -> Any:
        if not check(value):
            raise TypeError(f"expected {name}")
        return float(value) if kind is float else value

    converter.register_structure_hook(kind, hook)


_strict(str, lambda v: isinstance(v, str), "str")
_strict(int, lambda v: isinstance(v, int) and not isinstance(v, bool), "int")
_strict(float, lambda v: isinstance(v, int | float) and not isinstance(v, bool), "float")
_strict(bool, lambda v: isinstance(v, bool), "bool")


def _collection_hook(kind: Any) -> Callable[[Any, Any], Any]:
    """Lists, tuples and sets from a JSON array only (cattrs would take any
    iterable: ``"abc"`` as ``["a", "b", "c"]``, an object as its keys), each
    element checked, every failing index named (``tags[1]: expected str``)."""
    origin, args = typing.get_origin(kind) or kind, typing.get_args(kind)
    if origin is tuple and args and args[-1] is not Ellipsis:
        items: list[Any] | None = list(args)  # a fixed tuple: one type per place
    else:
        items = None
    item = args[0] if args else Any
    make: Callable[[list[Any]], Any] = (
        frozenset
        if origin is frozenset
        else set
        if cattrs.cols.is_any_set(kind)
        else tuple
        if origin is tuple
        else list
    )

    def hook(value: Any, _: Any) -> Any:
        if not isinstance(value, list) or (items is not None and len(value) != len(items)):
            raise TypeError("expected an array")
        found, errors = [], []
        for index, element in enumerate(value):
            element_type = items[index] if items is not None else item
            try:
                found.append(converter.structure(element, element_type))
            except Exception as exc:
                note = cattrs.errors.IterableValidationNote(f"Structuring {kind} @ index {index}", index, element_type)
                exc.__notes__ = [*getattr(exc, "__notes__", []), note]
                errors.append(exc)
        if errors:
            raise cattrs.errors.IterableValidationError(f"While structuring {kind!r}", errors, kind)
        return make(found)

    return hook


converter.register_structure_hook_factory(
    lambda kind: cattrs.cols.is_sequence(kind) or cattrs.cols.is_any_set(kind), _collection_hook
)


class InvalidData(ValueError):
    """Data that does not fit its class; ``problems`` name each field by its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def describe(error: Exception) -> list[str]:
    """cattrs' errors as ``path: problem`` (``text: expected str``)."""
    problems = []
    for line in cattrs.transform_error(error, path="$"):
        problem, _, path = line.rpartition(" @ $")
        problem = problem.removeprefix("invalid value for type, ")
        path = path.removeprefix(".")
        problems.append(f"{path}: {problem}" if path else problem)
    return problems


def structure(data: Any, cls: type[T]) -> T:
    """``data`` (parsed JSON) as a ``cls``, checked.

    Raises:
        InvalidData: naming every field that does not fit.
    """
    if not isinstance(data, dict):
        raise InvalidData([f"expected an object ({cls.__name__}), not {_json_kind(data)}"])
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise InvalidData(describe(exc)) from None


def unstructure(value: Any) -> Any:
    """``value`` as JSON data (attrs instances become objects)."""
    return converter.unstructure(value)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", list: "an array"}.get(type(value), "a number")


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # annotations that do not resolve: the method is untyped to us
        return {}


def args_type(fn: Callable[..., Any]) -> type | None:
    """The attrs class a method's first parameter (``args``) is annotated with, if any."""
    try:
        first = next(iter(inspect.signature(fn).parameters.values()), None)
    except (TypeError, ValueError):
        return None
    hint = _hints(fn).get(first.name) if first is not None else None
    return hint if isinstance(hint, type) and attrs.has(hint) else None


def result_type(fn: Callable[..., Any]) -> Any:
    """A method's return annotation (``Any`` when it has none; an ``async
    def``'s is what it returns once awaited)."""
    return _hints(fn).get("return", Any)
