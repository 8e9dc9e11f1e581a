"""Names a package or module imports on first use (PEP 562): its public API stays one declaration, but importing
the package does not import what the names need (torch, scipy, pandas), so a command that needs none of them
(``smoe decode``, ``smoe info``) starts in a fraction of the time. And :func:`is_torch_tensor`, for modules that
accept torch tensors without importing torch.
"""
from __future__ import annotations

import importlib
import sys


def is_torch_tensor(x) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch (if torch is not imported, it is not one)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def lazy_exports(anchor: str, namespace: dict, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for a module whose names in ``exports`` are imported on first access.

    ``exports`` maps a name to ``".module"`` (the module itself) or ``".module:attr"`` (one of its attributes),
    relative to the package ``anchor`` (``__name__`` in a package's ``__init__``, ``__package__`` in a module).
    The value is stored in ``namespace`` (the module's ``globals()``), so each name is imported once. Use::

        __getattr__, __dir__ = lazy_exports(__name__, globals(), {"fit": ".training:fit"})
    """
    def __getattr__(name: str):
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {namespace.get('__name__')!r} has no attribute {name!r}")
        module, _, attr = target.partition(":")
        value = importlib.import_module(module, anchor)
        if attr:
            value = getattr(value, attr)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
