"""One registry per plug-in kind (timm-style): name -> factory.

Adding a dataset, encoder, fusion head or method = one file that registers itself + one yaml.
Tests enumerate the registries, so a new entry is tested automatically.
"""
from __future__ import annotations

import importlib
from typing import Callable


class Registry:
    def __init__(self, kind: str, package: str):
        self.kind, self.package = kind, package  # the package whose import registers the entries
        self._entries: dict[str, Callable] = {}

    def _load(self) -> None:
        importlib.import_module(self.package)

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
