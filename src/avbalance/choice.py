"""`Choice`: a closed set of strings for the config schema, in a module of its own so that
methods import it without Hydra (scripts/bench_train.py runs on a machine with torch only)."""
from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A closed set of strings: compares, hashes and prints as its value (`cfg.precision == "bf16"`)."""

    def __str__(self) -> str:
        return self.value
