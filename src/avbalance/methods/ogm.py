"""OGM and OGM-GE (Peng et al., CVPR 2022), as the reference code at HEAD (REFERENCE_OGM_GE.md §1).

Per step, after backward and before the optimizer step:
  rho_v = s_v / s_a, rho_a = 1 / rho_v         (summed true-class softmax, current batch)
  dominant modality u gets k_u = 1 - tanh(alpha * rho_u), the other k = 1   (paper Eq. 10)
  for the selected encoder parameters: g <- k_u * g  (+ GE: N(0, (std(g) + 1e-8)^2) noise)
only inside the inclusive epoch window [start_epoch, end_epoch]. All on the device: no host sync.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..registry import METHODS
from ..choice import Choice
from .base import MODALITIES, Method, MethodConfig

Scope = Choice("Scope", {v: v for v in ("conv", "all")})
Rule = Choice("Rule", {v: v for v in ("tanh", "power")})


@dataclass
class OGMConfig(MethodConfig):
    alpha: float = 0.1
    beta: float = 1.0                 # only used by coefficient=power
    ge: bool = False
    start_epoch: int = 0              # inclusive window, epochs from 0
    end_epoch: int = 50
    scope: Scope = Scope.conv         # conv = the encoders' conv kernels (reference) | all
    coefficient: Rule = Rule.tanh     # tanh = paper Eq. 10 | power = this project's extension
    noise_seed_offset: int = 7919     # GE's generator is seeded with seed + this


def ogm_coefficients(score_a: torch.Tensor, score_v: torch.Tensor, alpha: float, beta: float = 1.0,
                     rule: str = "tanh") -> tuple[torch.Tensor, torch.Tensor]:
    """(k_audio, k_visual). Tie (rho = 1) follows the reference's else-branch: audio is damped.

    rule=tanh:  k_dominant = 1 - tanh(alpha * rho)                   (paper Eq. 10; jumps at rho = 1)
    rule=power: k_dominant = clamp(1 - alpha * (1 - 1/rho)^beta, 0, 1) (this project's continuous
                variant, 1 at balance; an extension, not the paper's)
    """
    ratio_v = score_v / score_a
    ratio_a = 1.0 / ratio_v
    visual_dominant = ratio_v > 1  # a device bool tensor: torch.where, never a Python if
    if rule == "tanh":
        damp = lambda r: 1.0 - torch.tanh(alpha * r)  # noqa: E731
    elif rule == "power":
        damp = lambda r: (1.0 - alpha * (1.0 - 1.0 / r).clamp(min=0) ** beta).clamp(0.0, 1.0)  # noqa: E731
    else:
        raise ConfigError(f"modulation.coefficient={rule!r}; expected one of ['power', 'tanh']")
    one = torch.ones_like(ratio_v)
    k_a = torch.where(visual_dominant, one, damp(ratio_a))
    k_v = torch.where(visual_dominant, damp(ratio_v), one)
    return k_a, k_v


class NoiseBuffer:
    """GE's flat noise buffer and, per list of gradient shapes, its views shaped like the gradients
    (made once: a step then fills every view with one draw and dispatches no per-tensor view op)."""

    def __init__(self, flat: torch.Tensor):
        self.flat, self._views = flat, {}

    def views(self, grads: list[torch.Tensor]) -> tuple[int, list[torch.Tensor]]:
        """(n elements, views of flat[:n] shaped like `grads`, in order)."""
        key = tuple(g.shape for g in grads)
        if key not in self._views:
            numels = [g.numel() for g in grads]
            n = sum(numels)
            self._views[key] = (n, [z.view_as(g) for z, g in zip(self.flat[:n].split(numels), grads)])
        return self._views[key]


def modulate_(grads: list[torch.Tensor], k: torch.Tensor, generator: torch.Generator | None = None,
              noise: torch.Tensor | NoiseBuffer | None = None) -> None:
    """In place: g <- k * g (+ eps, eps ~ N(0, sigma^2) per element, sigma = std(g) + 1e-8 of the
    UNSCALED gradient, one sigma per tensor: the reference's merged GE, §1.5). Foreach ops over
    per-tensor 0-d scalars, no sync. `noise`: a flat buffer of at least sum(numel) elements (or a
    NoiseBuffer over one, which keeps its views), reused across steps (else one is allocated here);
    it is overwritten."""
    if not grads:
        return
    k = k.to(grads[0].dtype)
    if generator is None:
        torch._foreach_mul_(grads, k)
        return
    # order matters: sigma is taken before scaling, as the reference evaluates its RHS first
    sigma = torch.stack([g.std() for g in grads]).nan_to_num_(0.0) + 1e-8  # [n_tensors]
    if not isinstance(noise, NoiseBuffer):
        flat = noise if noise is not None else torch.empty(sum(g.numel() for g in grads), device=grads[0].device,
                                                           dtype=grads[0].dtype)
        noise = NoiseBuffer(flat)
    n, z = noise.views(grads)                                               # [numel_t] views, shaped like g_t
    # one N(0, 1) draw over all elements in order: the same values as randn(n, generator=generator)
    noise.flat[:n].normal_(generator=generator)
    torch._foreach_mul_(z, list(sigma.to(noise.flat.dtype).unbind()))      # z_t * sigma_t, 0-d device scalars
    torch._foreach_mul_(grads, k)
    torch._foreach_add_(grads, z)


@METHODS.register("ogm")
@METHODS.register("ogm_ge")  # the same method; ogm_ge.yaml turns `ge` on
class OGM(Method):
    Config = OGMConfig
    needs_two_modalities = True
    graph_safe = True  # device-only step: coefficients, GE's std and noise (its own generator), no sync

    @staticmethod
    def check_config(m) -> None:
        if m.alpha < 0:
            raise ConfigError(f"modulation.alpha={m.alpha!r} must be >= 0")
        if m.coefficient == "power" and not m.beta > 0:
            raise ConfigError(f"modulation.beta={m.beta!r} must be > 0 with modulation.coefficient=power")
        if m.start_epoch < 0 or m.start_epoch > m.end_epoch:
            raise ConfigError(f"modulation.start_epoch={m.start_epoch} must be >= 0 and <= modulation.end_epoch={m.end_epoch}")

    def __init__(self, cfg, model, *, device, seed):
        super().__init__(cfg, model, device=device, seed=seed)
        self.alpha, self.beta, self.rule = float(cfg.alpha), float(cfg.beta), cfg.coefficient
        self.start, self.end = int(cfg.start_epoch), int(cfg.end_epoch)
        self.ge = bool(cfg.ge)
        # parameters picked once, by encoder module (never by name), not on every step
        self.params = {m: model.encoder_params(m, cfg.scope) for m in MODALITIES}
        # dedicated generator: GE noise is reproducible and does not shift any other random stream
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed + int(cfg.noise_seed_offset))
        self._noise: NoiseBuffer | None = None  # GE's flat noise buffer, made on first use, reused

    def after_backward(self, model, out, batch, epoch):
        if not self.start <= epoch <= self.end:  # Python ints: no device sync
            return super().after_backward(model, out, batch, epoch)  # logged as applied: 1
        s = self.scores(out, batch.label)  # the loss's, reduced once per step
        k_a, k_v = ogm_coefficients(s[0], s[1], self.alpha, self.beta, self.rule)
        gen = self.generator if self.ge else None
        for m, k in (("audio", k_a), ("visual", k_v)):
            grads = [p.grad for p in self.params[m] if p.grad is not None]
            modulate_(grads, k, gen, self._noise_buffer() if self.ge and grads else None)
        return {"mod/coeff_audio": k_a, "mod/coeff_visual": k_v}

    def graph_key(self, epoch: int):
        return self.start <= epoch <= self.end  # inside the window or not: two different steps

    def graph_generators(self) -> list[torch.Generator]:
        return [self.generator] if self.ge and self.generator.device.type == "cuda" else []

    def _noise_buffer(self) -> NoiseBuffer:
        """GE's flat noise buffer, shared by the two encoders (they are modulated in turn) and as
        large as the larger one's selected parameters: allocated on the first step only."""
        if self._noise is None:
            p = max(self.params.values(), key=lambda ps: sum(q.numel() for q in ps))
            self._noise = NoiseBuffer(torch.empty(sum(q.numel() for q in p), device=p[0].device, dtype=p[0].dtype))
        return self._noise

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"].cpu())  # a CPU byte tensor, also for a CUDA generator


@METHODS.register("none")
class NoModulation(Method):
    graph_safe = True
