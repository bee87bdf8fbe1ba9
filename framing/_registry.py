"""Framer registry and spec strings.

Spec grammar (whitespace around tokens is ignored)::

    spec    := target [ ":" params ]
    target  := name | import-path
    name    := registered name, e.g. "length", "msgpack-rpc", "nvme-tcp", "onc-rpc"
    import-path := dotted.module ":" ClassName        (e.g. "pkg.mod:MyFramer")
    params  := key "=" value { "," key "=" value }

Examples: ``length:offset=0,size=4,order=big``, ``msgpack-rpc``,
``nvme-tcp:hdgst=1``, ``onc-rpc:max=1048576``, ``pkg.mod:MyFramer:max=4096``.

A name is looked up in the registry (:func:`register_framer`), then in the
entry-point group ``mux_rpc.framers`` (``importlib.metadata``; the entry
point's name is the framer name, its object a factory). A target with a ``:``
whose second part is not ``key=value`` is an import path. Factories receive the
parameters as a ``dict[str, str]``; classes derived from
:class:`~framing.Framer` are called through their ``from_spec`` classmethod.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from ._base import Framer
from ._errors import BadFramerSpec, FramingError, UnknownFramer

__all__ = [
    "ENTRY_POINT_GROUP",
    "FramerFactory",
    "available_framers",
    "framer_from_spec",
    "parse_spec",
    "register_framer",
    "unregister_framer",
]

ENTRY_POINT_GROUP = "mux_rpc.framers"

FramerFactory = Callable[[Mapping[str, str]], Framer[Any]]
"""Builds a framer from the ``key=value`` parameters of a spec string."""

_REGISTRY: dict[str, FramerFactory] = {}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IMPORT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _as_factory(obj: Any) -> FramerFactory:
    if isinstance(obj, type) and issubclass(obj, Framer):
        return obj.from_spec
    if callable(obj):
        return obj  # type: ignore[no-any-return]
    raise TypeError(f"framer factory must be callable, got {obj!r}")


def register_framer(name: str, factory: Any, *, replace: bool = False) -> None:
    """Register ``factory`` under ``name`` for :func:`framer_from_spec`.

    ``factory`` is a :class:`~framing.Framer` subclass (built through its
    ``from_spec``) or a callable taking the spec's parameters as a
    ``dict[str, str]`` and returning a framer. Registering a taken name raises
    ``ValueError`` unless ``replace`` is true.
    """
    if not _NAME.match(name):
        raise ValueError(f"invalid framer name {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"framer {name!r} is already registered")
    _REGISTRY[name] = _as_factory(factory)


def unregister_framer(name: str) -> None:
    """Remove a registered framer (KeyError if absent)."""
    del _REGISTRY[name]


def available_framers() -> list[str]:
    """Registered names plus the names of installed ``mux_rpc.framers`` entry points."""
    from importlib import metadata  # lazy: importlib.metadata pulls in email, socket

    names = set(_REGISTRY)
    names.update(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """Split a spec into ``(name_or_module, class_name_or_None, params)``."""
    if not isinstance(spec, str) or not spec.strip():
        raise BadFramerSpec(f"empty framer spec {spec!r}")
    parts = [p.strip() for p in spec.strip().split(":")]
    target = parts[0]
    attr: str | None = None
    rest = parts[1:]
    if rest and rest[0] and "=" not in rest[0] and target not in _REGISTRY:
        attr = rest.pop(0)
        if not _IMPORT.match(target) or not _IMPORT.match(attr):
            raise BadFramerSpec(
                f"bad import path {target}:{attr!r} in spec {spec!r} "
                "(expected package.module:ClassName)"
            )
    elif not _NAME.match(target):
        raise BadFramerSpec(f"bad framer name {target!r} in spec {spec!r}")
    if len(rest) > 1:
        raise BadFramerSpec(f"too many ':' in spec {spec!r}")
    params: dict[str, str] = {}
    if rest and rest[0]:
        for item in rest[0].split(","):
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not _KEY.match(key) or not value:
                raise BadFramerSpec(
                    f"bad parameter {item.strip()!r} in spec {spec!r} (expected key=value)"
                )
            if key in params:
                raise BadFramerSpec(f"parameter {key!r} given twice in spec {spec!r}")
            params[key] = value
    return target, attr, params


def _lookup(name: str) -> FramerFactory:
    factory = _REGISTRY.get(name)
    if factory is not None:
        return factory
    from importlib import metadata  # lazy: importlib.metadata pulls in email, socket

    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                obj = ep.load()
            except Exception as exc:
                raise UnknownFramer(
                    f"entry point {name!r} ({ep.value}) failed to load: {exc}"
                ) from exc
            factory = _as_factory(obj)
            _REGISTRY.setdefault(name, factory)
            return factory
    raise UnknownFramer(f"unknown framer {name!r} (known: {', '.join(available_framers())})")


def _import(module: str, attr: str) -> FramerFactory:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise UnknownFramer(f"cannot import module {module!r}: {exc}") from exc
    try:
        obj = getattr(mod, attr)
    except AttributeError as exc:
        raise UnknownFramer(f"module {module!r} has no attribute {attr!r}") from exc
    try:
        return _as_factory(obj)
    except TypeError as exc:
        raise UnknownFramer(f"{module}:{attr} is not a framer class or factory") from exc


def framer_from_spec(spec: str) -> Framer[Any]:
    """Build a framer from a spec string (see the module docstring for the
    grammar). Raises :class:`~framing.BadFramerSpec` (or its subclass
    :class:`~framing.UnknownFramer`) naming the problem."""
    target, attr, params = parse_spec(spec)
    factory = _import(target, attr) if attr is not None else _lookup(target)
    try:
        framer = factory(params)
    except FramingError:
        raise
    except (TypeError, ValueError) as exc:
        raise BadFramerSpec(f"spec {spec!r}: {exc}") from exc
    if not isinstance(framer, Framer):
        raise BadFramerSpec(
            f"spec {spec!r}: factory returned {type(framer).__name__}, not a Framer"
        )
    return framer
