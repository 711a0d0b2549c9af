"""MSLR, Modality-Specific Learning Rates (Yao and Mihalcea, Findings of ACL 2022): each modality's
branch trains with its own learning rate. No official code exists; the rule is the one of the
MSLR baseline in lihong2303/AGM at 5a65542 (run/CREMAD_main.py; ../shared/docs/methods/mslr.md §3):

  c_m(e) = init_m * r_m(e)          the multiplier of branch m (encoder + its own head weights)
  r_m    = 1 while fewer than `history` epochs were seen, then A_m(e) / mean(last `history` A_m),
           A_m(e) = modality m's unimodal accuracy on the selection split after epoch e (FIFO)
Inside [start_epoch, end_epoch] branch m trains with lr * c_m (apply=lr: the optimizer's
parameter groups, as the paper's learning rates; apply=grad: the reference's gradient scaling
before the step, which Adam's normaliser cancels). Shared head weights keep the base rate.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import II

from ..errors import ConfigError
from ..registry import METHODS
from ..schema import Choice
from .base import MODALITIES, Method, MethodConfig, check_epoch_window

Apply = Choice("Apply", {v: v for v in ("lr", "grad")})


@dataclass
class MSLRConfig(MethodConfig):
    init_audio: float = 0.9         # AGM repo, CREMA-D (UR-Funny: audio 0.9, visual 1.4, text 0.7)
    init_visual: float = 1.1
    history: int = 5                # FIFO length of the accuracy trend
    start_epoch: int = 0            # inclusive window; AGM: 0..20 of 10 epochs, i.e. the whole run
    end_epoch: int = II("epochs")
    apply: Apply = Apply.lr         # lr = param-group learning rates (paper) | grad = gradient scaling (reference)
    ratio_min: float = 0.0          # bounds on r_m: none in the reference (the spec suggests [0.5, 2])
    ratio_max: float = float("inf")


def next_ratio(history: list[float], acc: float, length: int) -> tuple[float, list[float]]:
    """(r for the next epoch, the updated FIFO): r = 1 while the FIFO holds fewer than `length`
    accuracies; then r = acc / mean(FIFO), and acc replaces the oldest entry."""
    if len(history) < length:
        return 1.0, history + [acc]
    mean = sum(history) / len(history)
    return (acc / mean if mean > 0 else 1.0), history[1:] + [acc]


@METHODS.register("mslr")
class MSLR(Method):
    Config = MSLRConfig
    needs_two_modalities = True
    trace = ("mod/ratio", "mod/lr_scale_audio", "mod/lr_scale_visual")
    brief = {"c_a": "mod/lr_scale_audio", "c_v": "mod/lr_scale_visual"}

    @staticmethod
    def check_config(m) -> None:
        for key in ("init_audio", "init_visual"):
            if not m[key] > 0:
                raise ConfigError(f"modulation.{key}={m[key]!r} is not allowed; expected a number > 0")
        if m.history < 1:
            raise ConfigError(f"modulation.history={m.history!r} is not allowed; expected an integer >= 1")
        if not 0 <= m.ratio_min <= m.ratio_max:
            raise ConfigError(f"modulation.ratio_min={m.ratio_min!r} is not allowed; expected 0 <= ratio_min <= "
                              f"modulation.ratio_max={m.ratio_max!r}")
        check_epoch_window(m)

    def __init__(self, cfg, model, *, device, seed):
        super().__init__(cfg, model, device=device, seed=seed)
        self.init = {"audio": float(cfg.init_audio), "visual": float(cfg.init_visual)}
        self.length, self.apply = int(cfg.history), str(cfg.apply)
        self.bounds = (float(cfg.ratio_min), float(cfg.ratio_max))
        self.start, self.end = int(cfg.start_epoch), int(cfg.end_epoch)
        self.ratio = {m: 1.0 for m in MODALITIES}         # r_m for the next epoch
        self.history = {m: [] for m in MODALITIES}
        self.applied = {m: 1.0 for m in MODALITIES}       # the multiplier in the groups' lr now
        # branch m = its encoder + the head's weights that see only m (sum's fc_a / fc_v)
        self.branch = {m: model.encoder_params(m) + model.head.branch_params(m) for m in MODALITIES}
        self.scale = {m: self.one for m in MODALITIES}    # this epoch's c_m, a device scalar for the logs

    def multiplier(self, modality: str, epoch: int) -> float:
        return self.init[modality] * self.ratio[modality] if self.start <= epoch <= self.end else 1.0

    def param_groups(self, model):
        branch_ids = {id(p) for m in MODALITIES for p in self.branch[m]}
        # the shared weights first: metrics.jsonl's `lr` (the first group's) is then the base rate
        groups = [{"params": [p for p in model.head_params() if id(p) not in branch_ids], "modality": "head"}]
        groups += [{"params": self.branch[m], "modality": m} for m in MODALITIES]
        if len(model.aux):
            groups.append({"params": [p for p in model.aux.parameters() if p.requires_grad], "modality": "aux"})
        return groups

    def on_epoch_start(self, epoch, ctx):
        c = {m: self.multiplier(m, epoch) for m in MODALITIES}
        if self.apply == "lr":  # the scheduler's rate times c_m (the scheduler must be chainable: step, none)
            for group in ctx["optimizer"].param_groups:
                m = group.get("modality")
                if m in c:
                    group["lr"] = group["lr"] / self.applied[m] * c[m]
            self.applied = c
        self.scale = {m: torch.tensor(c[m], device=self.device) for m in MODALITIES}  # one copy an epoch

    def after_backward(self, model, out, batch, epoch):
        if self.apply == "grad" and self.start <= epoch <= self.end:  # the reference: g <- c_m g, all of branch m
            for m in MODALITIES:
                grads = [p.grad for p in self.branch[m] if p.grad is not None]
                if grads:
                    torch._foreach_mul_(grads, self.scale[m])
        return {"mod/lr_scale_audio": self.scale["audio"], "mod/lr_scale_visual": self.scale["visual"]}

    def on_epoch_end(self, epoch, ctx):
        for m in MODALITIES:  # the selection split's unimodal accuracy, already on the host
            r, self.history[m] = next_ratio(self.history[m], float(ctx["val"][f"acc_{m}"]), self.length)
            self.ratio[m] = min(max(r, self.bounds[0]), self.bounds[1])

    def state_dict(self):
        return {"ratio": dict(self.ratio), "history": {m: list(h) for m, h in self.history.items()},
                "applied": dict(self.applied)}

    def load_state_dict(self, state):
        self.ratio, self.applied = dict(state["ratio"]), dict(state["applied"])
        self.history = {m: list(h) for m, h in state["history"].items()}
