"""UMT, Uni-Modal Teacher (Du et al., ICML 2023). No official code; the loss is BalanceBenchmark's
UMT_trainer.py at 4c1482f (../shared/docs/methods/umt.md §3).

Stage 1 (`pretrain`, a fresh run only): per modality m a teacher T_m = (E_m^T, linear head), the
student's encoder architecture initialised afresh, trained alone with CE on modality m for
`teacher_epochs` (the run's optimizer class and settings, constant rate), the epoch with the best
unimodal accuracy on the selection split kept. Saved as <run_dir>/teachers/<m>.pt, then frozen:
eval mode, no grad. A resume loads them from there; `teachers=<folder>` reuses another run's.
Stage 2, per step, with z_m the student's encoder features (what the fusion head saw):
  loss = CE(fused) + scaling * sum_m MSE(z_m, E_m^T(x_m))      MSE averaged over batch and dims
`teacher_mode=train` is BalanceBenchmark's: teachers under no_grad but in training mode (BatchNorm
on batch statistics, its running statistics drifting with the student's batches).
"""
from __future__ import annotations

import copy
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import II

from ..errors import ConfigError
from ..models.model import reference_init
from ..registry import METHODS
from ..rundir import load_checkpoint, save_checkpoint
from ..schema import Choice
from .base import MODALITIES, Method, MethodConfig

log = logging.getLogger("avbalance")
TeacherMode = Choice("TeacherMode", {v: v for v in ("eval", "train")})


@dataclass
class UMTConfig(MethodConfig):
    scaling: float = 10.0                 # lambda: BalanceBenchmark, every dataset
    teacher_epochs: int = II("epochs")    # a guess: the student's budget (the paper's protocol is unread)
    teachers: Optional[str] = None        # a folder with audio.pt and visual.pt (a run's teachers/): no training
    teacher_mode: TeacherMode = TeacherMode.eval  # eval = frozen | train = BalanceBenchmark (BatchNorm drifts)
    init_seed_offset: int = 6151          # the teachers' initialisation is seeded with seed + this (+ 1 for visual)


class Teacher(nn.Module):
    """A unimodal model: an encoder and a linear head."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder, self.fc = encoder, nn.Linear(encoder.out_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))


def fresh_teacher(encoder: nn.Module, num_classes: int, seed: int) -> Teacher:
    """A copy of `encoder`'s architecture, initialised afresh from `seed` (the global RNG untouched:
    the student's run is the same with or without the teachers)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)   # the CPU generator only: torch.manual_seed would reseed CUDA for good
        teacher = Teacher(copy.deepcopy(encoder).cpu(), num_classes)
        for mod in teacher.modules():
            if mod is not teacher and hasattr(mod, "reset_parameters"):
                mod.reset_parameters()   # BatchNorm's running statistics too
        teacher.apply(reference_init)
    return teacher


def distillation(feats: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{m: MSE(z_m, t_m)}, each mean over [B, D]."""
    return {m: F.mse_loss(feats[m].float(), targets[m].float()) for m in MODALITIES}


@torch.no_grad()
def unimodal_accuracy(teacher: Teacher, modality: str, batches) -> float:
    teacher.eval()
    hits = total = 0
    for b in batches:
        hits += (teacher(getattr(b, modality)).argmax(1) == b.label).sum()
        total += len(b)
    return float(hits) / max(total, 1)


def train_teacher(teacher: Teacher, modality: str, data, device, epochs: int, optimizer: torch.optim.Optimizer) -> dict:
    """CE on one modality; -> the checkpoint of the epoch with the best selection-split accuracy."""
    opt = type(optimizer)(teacher.parameters(), **optimizer.defaults)  # the run's optimizer, fresh state
    best = {"acc": -1.0}
    for epoch in range(epochs):
        teacher.train()
        for batch in data.train_batches(epoch, device):
            loss = F.cross_entropy(teacher(getattr(batch, modality)), batch.label)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc = unimodal_accuracy(teacher, modality, data.eval_batches(data.selection_split, device))
        if acc > best["acc"]:
            best = {"model": copy.deepcopy(teacher.state_dict()), "epoch": epoch, "acc": acc, "modality": modality}
    return best


@METHODS.register("umt")
class UMT(Method):
    Config = UMTConfig
    needs_two_modalities = True
    trace = ("mod/ratio", "mod/distill_audio", "mod/distill_visual")
    brief = {"d_a": "mod/distill_audio", "d_v": "mod/distill_visual"}
    supports_ddp = False  # its teachers are trained by a loop of its own, which has no gradient all-reduce

    @staticmethod
    def check_config(m) -> None:
        if m.scaling < 0:
            raise ConfigError(f"modulation.scaling={m.scaling!r} is not allowed; expected a number >= 0")
        if m.teacher_epochs < 1:
            raise ConfigError(f"modulation.teacher_epochs={m.teacher_epochs!r} is not allowed; expected an integer >= 1")
        if m.teachers is not None:
            missing = [f"{t}.pt" for t in MODALITIES if not (Path(m.teachers) / f"{t}.pt").is_file()]
            if missing:
                raise ConfigError(f"modulation.teachers={m.teachers!r} is not allowed; expected a folder holding "
                                  f"audio.pt and visual.pt (a UMT run's teachers/), {', '.join(missing)} missing")

    def __init__(self, cfg, model, *, device, seed):
        super().__init__(cfg, model, device=device, seed=seed)
        self.model, self.scaling, self.epochs = model, float(cfg.scaling), int(cfg.teacher_epochs)
        self.source, self.mode = cfg.teachers, str(cfg.teacher_mode)
        self.init_seed = seed + int(cfg.init_seed_offset)
        self.teachers: dict[str, Teacher] | None = None

    def _fresh(self, m: str) -> Teacher:
        return fresh_teacher(self.model.encoders[m], self.model.head.num_classes, self.init_seed + MODALITIES.index(m))

    def pretrain(self, ctx):
        folder = Path(ctx["run_dir"]) / "teachers"
        for m in MODALITIES:
            if self.source is not None:  # another run's teachers: copied, so that a resume finds them here
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(self.source) / f"{m}.pt", folder / f"{m}.pt")
                continue
            teacher = self._fresh(m).to(self.device)
            best = train_teacher(teacher, m, ctx["data"], self.device, self.epochs, ctx["optimizer"])
            save_checkpoint(folder / f"{m}.pt", best)
            log.info("UMT teacher %s: epoch %d of %d kept, %s acc %.4f", m, best["epoch"], self.epochs,
                     ctx["data"].selection_split, best["acc"])
        self.load_teachers(folder)

    def load_teachers(self, folder: Path) -> None:
        self.teachers = {}
        for m in MODALITIES:
            path = folder / f"{m}.pt"
            if not path.is_file():
                raise ConfigError(f"UMT needs its teachers: {path} is missing (a resumed run keeps them in "
                                  f"<run_dir>/teachers/; start afresh, or set modulation.teachers=<folder>)")
            teacher = self._fresh(m)
            try:
                teacher.load_state_dict(load_checkpoint(path)["model"])
            except (RuntimeError, KeyError) as e:  # torch's own text is pages long
                raise ConfigError(f"UMT teacher {path} does not fit this model (teachers of a different model or "
                                  f"dataset?): {type(e).__name__}") from None
            self.teachers[m] = teacher.to(self.device).requires_grad_(False).train(self.mode == "train")

    def on_epoch_start(self, epoch, ctx):
        if self.teachers is None:  # a resumed run: the pretraining stage is not run again
            self.load_teachers(Path(ctx["run_dir"]) / "teachers")

    def loss(self, out, batch, epoch):
        loss, logs = super().loss(out, batch, epoch)  # the fused CE (+ probes' own losses)
        with torch.no_grad():  # frozen targets (teacher_mode=train: BatchNorm still updates its statistics)
            targets = {m: self.teachers[m].encoder(getattr(batch, m)) for m in MODALITIES}
        d = distillation(out.features, targets)
        loss = loss + self.scaling * (d["audio"] + d["visual"])
        return loss, logs | {"train/loss": loss.detach(), "mod/distill_audio": d["audio"].detach(),
                             "mod/distill_visual": d["visual"].detach()}

    def after_backward(self, model, out, batch, epoch):
        return {}  # no gradient edit
