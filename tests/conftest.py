"""Shared fixtures: compose configs in-process (no subprocess per case), tiny shapes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from avbalance import schema

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
SHARED = ROOT.parent / "shared"

# a toy dataset small enough for a 2-step run
TINY = ["dataset.n_train=128", "dataset.n_val=64", "dataset.n_test=64", "dataset.spec_shape=[16,12]",
        "dataset.image_size=12", "model.width=4", "batch_size=64", "device=cpu"]


TIMINGS = ("epoch_seconds", "samples_per_second", "val_samples_per_second")  # the wall-clock columns of a metrics row


def make_cfg(*overrides: str, tiny: bool = True):
    schema.register()
    with initialize_config_dir(version_base=None, config_dir=str(CONFIG_DIR)):
        return compose("train", overrides=(TINY if tiny else []) + list(overrides))


@pytest.fixture
def cfg_factory():
    return make_cfg


def shared_unless_mutating(fixture_name, config) -> str:
    """Scope of a fixture that trains once for several tests: "module" normally; "function" under
    mutmut (MUTANT_UNDER_TEST set), whose per-test mapping credits a module fixture's work to the first
    test only, so the tests that assert on its output would never be run against a mutant."""
    return "function" if os.environ.get("MUTANT_UNDER_TEST") else "module"
