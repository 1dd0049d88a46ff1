"""Package attributes imported when first used (PEP 562): importing a package, and the ``fds``
command before it parses its arguments, stays fast (the engine pulls in River, NumPy and
scikit-learn: seconds on a loaded machine)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy(
    package: str, names: dict[str, tuple[str, str]], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``names`` maps a public name to its module and
    its name there (imported once, then kept in ``namespace``); another name is the submodule
    of that name, as when the package imported its submodules."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            if name.startswith("_") or "." in name:  # (hasattr(fds, "__main__") ran the CLI)
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":  # it exists; something it imports does not
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        module, attr = names[name]
        value = getattr(importlib.import_module(module), attr)
        namespace[name] = value  # once: later lookups do not come here
        return value

    return __getattr__
