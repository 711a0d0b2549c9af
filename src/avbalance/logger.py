"""Experiment loggers (`logger=none|wandb`). wandb runs offline unless configured otherwise."""
from __future__ import annotations

import os
from pathlib import Path


class NoLogger:
    def log(self, row: dict, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger:
    def __init__(self, cfg, run_dir: Path, config: dict):
        import wandb  # lazy: only runs that ask for it pay the import

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=cfg.project, entity=cfg.get("entity"), mode=cfg.mode, dir=str(run_dir),
                              name=cfg.get("run_name") or run_dir.name, config=config, tags=list(cfg.get("tags") or []))

    def log(self, row: dict, step: int) -> None:
        self.run.log(row, step=step)

    def finish(self) -> None:
        self.run.finish()


def build_logger(cfg, run_dir: Path, config: dict):
    return WandbLogger(cfg, run_dir, config) if cfg.name == "wandb" else NoLogger()
