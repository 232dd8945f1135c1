"""TypeScript types from an App's Python types: ``modelence-trio typescript module:app``.

One interface per attrs class used as a channel payload, as method
arguments or as a method's result (and every attrs class those reach), plus
the app's channel categories and method names with their types, added to
the browser client's ``Channels`` and ``Methods`` interfaces by module
augmentation. With the file beside the page's code, ``callMethod`` checks a
method's name and arguments and types its result, and ``ClientChannel``
accepts only the app's categories::

    modelence-trio typescript myapp:app -o static/modelence-app.d.ts
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ._typed import args_type, result_type

if TYPE_CHECKING:
    from ._app import App

__all__ = ["typescript"]

#: Where the browser client is imported from (what the augmentation names).
CLIENT_MODULE = "/_modelence/modelence.js"

_SCALARS: dict[Any, str] = {str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


class _Writer:
    def __init__(self) -> None:
        self.interfaces: dict[type, str] = {}  # class -> its interface text, in the order met
        self._pending: list[type] = []

    def ts(self, hint: Any) -> str:
        """The TypeScript type of a Python type hint."""
        if hint in _SCALARS:
            return _SCALARS[hint]
        if hint is Any or hint is object:
            return "unknown"
        if isinstance(hint, type) and attrs.has(hint):
            if hint not in self.interfaces:
                self.interfaces[hint] = ""  # reserved: a class that refers to itself
                self._pending.append(hint)
            return hint.__name__
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return " | ".join(_literal(member.value) for member in hint) or "never"
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            return " | ".join(dict.fromkeys(self.ts(arg) for arg in args))
        if origin is typing.Literal:
            return " | ".join(_literal(arg) for arg in args)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return "[" + ", ".join(self.ts(arg) for arg in args) + "]"
        if isinstance(origin, type) and issubclass(origin, Mapping):
            return f"Record<string, {self.ts(args[1]) if len(args) == 2 else 'unknown'}>"
        if isinstance(origin, type) and issubclass(origin, Iterable) and origin is not str:
            item = self.ts(args[0]) if args else "unknown"
            return f"({item})[]" if " " in item else f"{item}[]"
        if hint in (list, tuple, set, frozenset) or (isinstance(hint, type) and issubclass(hint, Sequence)):
            return "unknown[]"
        if hint is dict:
            return "Record<string, unknown>"
        return "unknown"

    def flush(self) -> None:
        """Write the interfaces of the classes met so far (and of those they reach)."""
        while self._pending:
            cls = self._pending.pop(0)
            hints = typing.get_type_hints(cls)
            fields = [f"  {field.name}: {self.ts(hints.get(field.name, Any))};" for field in attrs.fields(cls)]
            doc = f"/** {cls.__module__}.{cls.__qualname__} */\n"
            self.interfaces[cls] = doc + f"export interface {cls.__name__} {{\n" + "\n".join(fields) + "\n}"

    def input_of(self, cls: type) -> str:
        """What a client sends for ``cls``: its fields with defaults may be left out."""
        optional = [f'"{field.name}"' for field in attrs.fields(cls) if field.default is not attrs.NOTHING]
        if not optional:
            return cls.__name__
        keys = " | ".join(optional)
        return f"Omit<{cls.__name__}, {keys}> & Partial<Pick<{cls.__name__}, {keys}>>"


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def typescript(app: App, *, command: str = "modelence-trio typescript", client_module: str = CLIENT_MODULE) -> str:
    """The TypeScript declarations of ``app``'s channels and methods (see the module's docstring)."""
    writer = _Writer()
    channels = []
    for module in app.modules:
        for channel in module.channels:
            payload = writer.ts(channel.payload) if channel.payload is not None else "unknown"
            channels.append(f'    "{channel.category}": {payload};')
    methods = []
    for module in app.modules:
        for name, method in (*module.mutations.items(), *module.queries.items()):
            cls = args_type(method)
            if cls is not None:
                writer.ts(cls)
            args = writer.input_of(cls) if cls is not None else "Record<string, unknown>"
            result = writer.ts(result_type(method))
            methods.append(f'    "{module.name}.{name}": {{ args: {args}; result: {result} }};')
    writer.flush()
    parts = [
        f"// Generated by `{command}`: do not edit. The app's payload and argument",
        "// classes, channels and methods, for the modelence-trio browser client's types.",
        "",
        "export {};  // a module: the declaration below adds to the client's, it does not replace it",
        "",
        *(text + "\n" for text in writer.interfaces.values()),
        f'declare module "{client_module}" {{',
        "  interface Channels {",
        *channels,
        "  }",
        "  interface Methods {",
        *methods,
        "  }",
        "}",
        "",
    ]
    return "\n".join(parts)
