"""MMPareto (Wei and Hu, ICML 2024), as MMPareto_ICML2024 at a339db3 (code/MMPareto.py,
code/min_norm_solvers.py; ../shared/docs/methods/mmpareto.md §3).

The losses of the multitask baseline (multitask.py): L_mm = CE(fused), L_a, L_v from own heads.
Per step and per encoder m (its parameters theta_m, all of them, BatchNorm included):
  g_mm = dL_mm/dtheta_m,  g_uni = dL_m/dtheta_m           (two separate gradients)
  cos  = cosine(g_mm, g_uni) over the whole encoder
  k_mm = 0.5 if cos > 0, else the min-norm weight c of |c g_mm + (1 - c) g_uni| (closed form, MGDA
         for two tasks); k_uni = 1 - k_mm
  per tensor p:  g_new = 2 (k_mm g_mm,p + k_uni g_uni,p),  g_sum = g_mm,p + g_uni,p
                 g_new *= |g_sum| / |g_new| if |g_sum| > |g_new|      (norms per tensor)
                 p.grad = gamma g_new
Heads get their plain gradient of L_mm + L_a + L_v. The reference gets g_mm and g_uni from four
backward passes; here three autograd.grad calls give the same numbers for about two backward
passes' work (L_a and L_v only reach their own encoder, and g_sum = g_mm + g_uni needs none).
`grads=accumulated` is BalanceBenchmark's version: its gradients accumulate before they are read,
so g_mm = g_uni = the total gradient, cos = 1, and every encoder gets 2 gamma (the total).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..registry import METHODS
from ..schema import Choice
from .base import MODALITIES
from .multitask import Multitask, MultitaskConfig

Grads = Choice("Grads", {v: v for v in ("separate", "accumulated")})


@dataclass
class MMParetoConfig(MultitaskConfig):
    gamma: float = 1.5              # hard-coded in MMPareto.py (BalanceBenchmark: alpha 1.5)
    grads: Grads = Grads.separate   # separate = the paper and its code | accumulated = BalanceBenchmark


def min_norm_weight(d11: torch.Tensor, d12: torch.Tensor, d22: torch.Tensor) -> torch.Tensor:
    """c minimising |c x1 + (1 - c) x2|^2 from d11 = <x1, x1>, d12 = <x1, x2>, d22 = <x2, x2>
    (min_norm_solvers._min_norm_element_from2, its clip to [0.001, 0.999] included)."""
    c = (d22 - d12) / (d11 + d22 - 2 * d12)
    return torch.where(d12 >= d11, torch.full_like(c, 0.999), torch.where(d12 >= d22, torch.full_like(c, 0.001), c))


def pareto_weights(g_mm: list[torch.Tensor], g_uni: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (k_mm, cos) for one encoder: cos over the whole encoder; k_mm = 0.5 without conflict
    (cos > 0), else the min-norm weight. Dot products summed over its tensors; no host sync."""
    dot = lambda xs, ys: torch.stack([torch.dot(x.reshape(-1).float(), y.reshape(-1).float()) for x, y in zip(xs, ys)]).sum()  # noqa: E731
    d11, d12, d22 = dot(g_mm, g_mm), dot(g_mm, g_uni), dot(g_uni, g_uni)
    cos = d12 / (d11 * d22).sqrt().clamp(min=1e-8)  # F.cosine_similarity's eps
    return torch.where(cos > 0, torch.full_like(cos, 0.5), min_norm_weight(d11, d12, d22)), cos


def combine(g_mm: list[torch.Tensor], g_uni: list[torch.Tensor], k_mm: torch.Tensor, gamma: float) -> list[torch.Tensor]:
    """The new gradient of each tensor: gamma * 2 (k_mm g_mm + (1 - k_mm) g_uni), scaled up to the
    norm of g_mm + g_uni when that is larger (per tensor)."""
    new = torch._foreach_add(torch._foreach_mul(g_mm, 2 * k_mm), torch._foreach_mul(g_uni, 2 * (1 - k_mm)))
    n_new = torch.stack(torch._foreach_norm(new))                          # [n_tensors]
    n_sum = torch.stack(torch._foreach_norm(torch._foreach_add(g_mm, g_uni)))
    # a zero g_new stays zero (the reference divides 0 by 0 there)
    scale = torch.where(n_sum > n_new, n_sum / n_new.clamp(min=1e-30), torch.ones_like(n_new)) * gamma
    for g, s in zip(new, scale):
        g.mul_(s)
    return new


def grads_of(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """d loss / d params, zeros where a parameter is not reached; the graph is kept."""
    gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p.detach()) if g is None else g for g, p in zip(gs, params)]


@METHODS.register("mmpareto")
class MMPareto(Multitask):
    Config = MMParetoConfig
    trace = ("mod/ratio", "mod/cos_audio", "mod/cos_visual", "mod/k_mm_audio", "mod/k_mm_visual")
    brief = {"cos_a": "mod/cos_audio", "cos_v": "mod/cos_visual"}
    # its backward takes per-modality gradients with autograd.grad, which DDP's gradient all-reduce
    # never sees: each process would step with its own gradients and the replicas would drift apart
    supports_ddp = False

    @staticmethod
    def check_config(m) -> None:
        if not m.gamma > 0:
            raise ConfigError(f"modulation.gamma={m.gamma!r} is not allowed; expected a number > 0")

    def __init__(self, cfg, model, *, device, seed):
        super().__init__(cfg, model, device=device, seed=seed)  # installs the unimodal heads first
        self.gamma, self.accumulated = float(cfg.gamma), str(cfg.grads) == "accumulated"
        self.enc = {m: model.encoder_params(m) for m in MODALITIES}
        enc_ids = {id(p) for ps in self.enc.values() for p in ps}
        self.rest = [p for p in model.parameters() if p.requires_grad and id(p) not in enc_ids]  # heads
        self.logs: dict[str, torch.Tensor] = {}

    def backward(self, loss):
        L, enc = self.losses, self.enc
        n_a = len(enc["audio"])
        if self.accumulated:  # BalanceBenchmark: both "gradients" are the total one
            g = grads_of(loss, enc["audio"] + enc["visual"])
            g_mm = g_uni = {"audio": g[:n_a], "visual": g[n_a:]}
        else:  # L_mm reaches both encoders, L_m only its own
            g = grads_of(L["fused"], enc["audio"] + enc["visual"])
            g_mm = {"audio": g[:n_a], "visual": g[n_a:]}
            g_uni = {m: grads_of(L[m], enc[m]) for m in MODALITIES}
        # the heads' plain gradient of the sum; inputs= stops the pass at the features (cheap)
        loss.backward(inputs=self.rest)
        for m in MODALITIES:
            k, cos = pareto_weights(g_mm[m], g_uni[m])
            for p, g_new in zip(enc[m], combine(g_mm[m], g_uni[m], k, self.gamma)):
                p.grad = g_new
            self.logs[f"mod/cos_{m}"], self.logs[f"mod/k_mm_{m}"] = cos.detach(), k.detach()

    def after_backward(self, model, out, batch, epoch):
        return dict(self.logs)
