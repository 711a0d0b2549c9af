"""InfoReg, adaptive unimodal regulation (Huang, Wei, Yang, Hu, CVPR 2025), as InfoReg_CVPR2025
main.py at 939b2ed ("Nov") and 41d887f ("March") (../shared/docs/methods/inforeg.md §3).

Loss: the multitask baseline's CE(fused) + CE(z_a) + CE(z_v) (multitask.py), one backward.
Epoch start: theta0 <- the encoders' parameters; per modality m a window indicator from the
history T_m of its past epochs' Fisher traces, padded in front with `trace_window` (W) zeros:
  k_m = 1 at epoch 0, else (tr1 - tr2) / tr1,  tr1 = mean(T_m[-W:]), tr2 = mean(T_m[-W-1:-1])
Per step, after backward (s_m = summed true-class softmax of the unimodal logits):
  beta_a = beta_audio  exp(tanh(s_a - s_v)) if s_a > s_v and k_a > tau, else 0
  beta_v = beta_visual exp(tanh(s_v - s_a)) if s_v > s_a and k_v > tau, else 0
  g <- g + beta_m (theta - theta0) for every parameter of encoder m   (grad of beta/2 |theta - theta0|^2)
  F_m += sum over the Conv/Linear weights W of encoder m of mean(g_W^2)  (the modified gradients)
Epoch end: T_m gets F_m, the epoch's "Fisher trace" (sum over layers of the mean of the summed
squared mini-batch gradients: the sum over steps commutes with the per-layer mean).
Options for the reference's behaviour: `window=audio` (both k's from the audio trace, as both
releases), `regulate=audio` (the March release's elif never regulates the visual encoder).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..registry import METHODS
from ..schema import Choice
from .base import MODALITIES
from .multitask import Multitask, MultitaskConfig

Window = Choice("Window", {v: v for v in ("own", "audio")})
Regulate = Choice("Regulate", {v: v for v in ("both", "audio")})


@dataclass
class InfoRegConfig(MultitaskConfig):
    tau: float = 0.05               # window threshold: Nov release (March: 0.04)
    beta_audio: float = 0.95        # hard-coded scales of the proximal strength
    beta_visual: float = 0.1
    trace_window: int = 10          # moving-average length of the trace history (and its zero padding)
    window: Window = Window.own     # own = k_m from modality m's trace | audio = both from audio's (reference)
    regulate: Regulate = Regulate.both  # both = either encoder when it leads (Nov) | audio = March release


def window_indicator(history: list[float], length: int) -> float:
    """k from the traces of the finished epochs: 1 before any; else the relative growth of the
    `length`-epoch moving average, the history padded in front with `length` zeros."""
    if not history:
        return 1.0
    # the reference's leading zeros add nothing to the sums: the divisor is `length` all along
    tr1, tr2 = sum(history[-length:]) / length, sum(history[-length - 1:-1]) / length
    return (tr1 - tr2) / tr1 if tr1 > 0 else 0.0  # tr1 = 0: no gradient at all, nothing to regulate


def regulation_strength(s_a: torch.Tensor, s_v: torch.Tensor, open_a: bool, open_v: bool,
                        beta_audio: float, beta_visual: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta_a, beta_v) on the device: only the leading modality, only while its window is open."""
    gap = s_a - s_v
    zero = torch.zeros_like(gap)
    beta_a = torch.where(gap > 0, beta_audio * torch.exp(torch.tanh(gap)), zero) * open_a
    beta_v = torch.where(gap < 0, beta_visual * torch.exp(torch.tanh(-gap)), zero) * open_v
    return beta_a, beta_v


def add_proximal_(grads: list[torch.Tensor], params: list[torch.Tensor], anchor: list[torch.Tensor],
                  beta: torch.Tensor) -> None:
    """In place: g <- g + beta (theta - theta0)."""
    diff = torch._foreach_sub([p.detach() for p in params], anchor)
    torch._foreach_mul_(diff, beta)
    torch._foreach_add_(grads, diff)


def fisher_trace(grads: list[torch.Tensor]) -> torch.Tensor:
    """sum over the tensors of mean(g^2): one step's share of the epoch's trace."""
    norms = torch.stack(torch._foreach_norm(grads))                            # [n] sqrt(sum g^2)
    numel = torch.tensor([g.numel() for g in grads], dtype=norms.dtype, device=norms.device)
    return (norms.square() / numel).sum()


@METHODS.register("inforeg")
class InfoReg(Multitask):
    Config = InfoRegConfig
    trace = ("mod/ratio", "mod/beta_audio", "mod/beta_visual", "mod/k_audio", "mod/k_visual",
             "mod/fisher_audio", "mod/fisher_visual")
    brief = {"b_a": "mod/beta_audio", "b_v": "mod/beta_visual", "k_a": "mod/k_audio"}

    @staticmethod
    def check_config(m) -> None:
        for key in ("beta_audio", "beta_visual"):
            if m[key] < 0:
                raise ConfigError(f"modulation.{key}={m[key]!r} is not allowed; expected a number >= 0")
        if m.trace_window < 1:
            raise ConfigError(f"modulation.trace_window={m.trace_window!r} is not allowed; expected an integer >= 1")

    def __init__(self, cfg, model, *, device, seed):
        super().__init__(cfg, model, device=device, seed=seed)
        self.tau, self.length = float(cfg.tau), int(cfg.trace_window)
        self.beta = {"audio": float(cfg.beta_audio), "visual": float(cfg.beta_visual)}
        self.own_window, self.visual_too = str(cfg.window) == "own", str(cfg.regulate) == "both"
        self.enc = {m: model.encoder_params(m) for m in MODALITIES}
        # the reference's Fisher proxy: the Conv2d and Linear weights of each encoder, found by module
        self.weights = {m: [mod.weight for mod in model.encoders[m].modules()
                            if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.weight.requires_grad] for m in MODALITIES}
        self.history: dict[str, list[float]] = {m: [] for m in MODALITIES}
        self.anchor: dict[str, list[torch.Tensor]] = {}
        self.fisher = {m: torch.zeros((), device=device) for m in MODALITIES}
        self.k = {m: 1.0 for m in MODALITIES}
        self.k_log = {m: self.one for m in MODALITIES}

    def on_epoch_start(self, epoch, ctx):
        self.anchor = {m: [p.detach().clone() for p in self.enc[m]] for m in MODALITIES}  # theta0
        self.fisher = {m: torch.zeros((), device=self.device) for m in MODALITIES}
        k = {m: window_indicator(self.history[m], self.length) for m in MODALITIES}
        self.k = k if self.own_window else {m: k["audio"] for m in MODALITIES}
        self.k_log = {m: torch.tensor(self.k[m], device=self.device) for m in MODALITIES}  # one copy an epoch

    def after_backward(self, model, out, batch, epoch):
        s = self.scores(out, batch.label)  # the loss's, reduced once per step
        beta = dict(zip(MODALITIES, regulation_strength(
            s[0], s[1], self.k["audio"] > self.tau, self.visual_too and self.k["visual"] > self.tau,
            self.beta["audio"], self.beta["visual"])))
        logs = {"mod/k_audio": self.k_log["audio"], "mod/k_visual": self.k_log["visual"]}
        for m in MODALITIES:
            pairs = [(p.grad, p, a) for p, a in zip(self.enc[m], self.anchor[m]) if p.grad is not None]
            if pairs:
                grads, params, anchor = map(list, zip(*pairs))
                add_proximal_(grads, params, anchor, beta[m])
            # after the proximal term: the trace sees the gradients the step uses (reference order)
            f = fisher_trace([w.grad for w in self.weights[m] if w.grad is not None])
            self.fisher[m] = self.fisher[m] + f
            logs |= {f"mod/beta_{m}": beta[m], f"mod/fisher_{m}": f}
        return logs

    def on_epoch_end(self, epoch, ctx):
        for m in MODALITIES:  # the epoch's one host read of the traces
            self.history[m].append(float(self.fisher[m]))

    def state_dict(self):
        return {"history": {m: list(h) for m, h in self.history.items()}}

    def load_state_dict(self, state):
        self.history = {m: list(h) for m, h in state["history"].items()}
