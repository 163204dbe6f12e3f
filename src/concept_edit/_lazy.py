"""Packages whose public names import their module on first use, so that `import concept_edit` (and the CLI's
`--help`) does not load torch and diffusers."""

from __future__ import annotations

import importlib
import sys
import types


def lazy_package(package: str, exports: dict[str, str]) -> None:
    """Make `package` import each name in `exports` ({name: module}) the first time it is read.

    A name that is also a submodule (`concept_edit.attacks.probe`, the function, in the module of that name)
    stays the name: the import system's setting the submodule as the package's attribute is turned into the
    name, as the eager `from .probe import probe` of the package always gave.
    """

    class LazyPackage(types.ModuleType):
        def __getattr__(self, name: str):
            if name not in exports:
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            value = getattr(importlib.import_module(exports[name]), name)
            setattr(self, name, value)
            return value

        def __setattr__(self, name: str, value) -> None:
            if name in exports and isinstance(value, types.ModuleType) and value.__name__ == f"{package}.{name}":
                value = getattr(value, name)
            super().__setattr__(name, value)

        def __dir__(self):
            return sorted(set(super().__dir__()) | set(exports))

    sys.modules[package].__class__ = LazyPackage
