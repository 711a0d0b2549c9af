"""One registry per plug-in kind (timm-style): name -> factory.

Adding a dataset, encoder, fusion head or method = one file that registers itself + one yaml.
A registry imports every module of its package (nothing to add to an `__init__`), then every
`*.py` in the plug-in folder: `$AVBALANCE_PLUGINS` (default `./plugins`), whose config groups
(`<folder>/modulation/<name>.yaml`, ...) Hydra finds through `hydra.searchpath` in train.yaml.
Tests enumerate the registries, so a new entry is tested automatically.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
import zlib
from pathlib import Path
from typing import Callable

PLUGINS_ENV = "AVBALANCE_PLUGINS"


def plugin_dir() -> Path:
    """The folder of out-of-package plug-ins (its `*.py` files and its config groups)."""
    return Path(os.environ.get(PLUGINS_ENV) or "plugins")


def import_package(package: str) -> None:
    """Import `package` and every module in it (discovery: no import line to maintain)."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{package}.{info.name}")


def load_plugins() -> None:
    """Import each `*.py` of the plug-in folder once (a file registers itself, as in the package)."""
    folder = plugin_dir()
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.py")):
        name = f"avbalance_plugin_{path.stem}_{zlib.crc32(str(path.resolve()).encode()):08x}"
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise


class Registry:
    def __init__(self, kind: str, package: str):
        self.kind, self.package = kind, package  # the package whose modules register the entries
        self._entries: dict[str, Callable] = {}
        self._imported = False

    def _load(self) -> None:
        if not self._imported:
            import_package(self.package)
            self._imported = True
        load_plugins()  # every time: a plug-in folder may be named after the first look-up (tests)

    def register(self, name: str) -> Callable:
        def deco(fn: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = fn
            return fn
        return deco

    def get(self, name: str) -> Callable:
        self._load()
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} '{name}'; expected one of: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries


DATASETS = Registry("dataset", "avbalance.data")
ENCODERS = Registry("encoder", "avbalance.models")
FUSIONS = Registry("fusion", "avbalance.models")
METHODS = Registry("modulation", "avbalance.methods")
