"""Balancing methods: every module here registers itself (`@METHODS.register`); the registry
imports them all, so a new method is one file + one yaml (configs/modulation/<name>.yaml)."""
from .base import Method, modality_scores  # noqa: F401
