"""OPM, On-the-fly Prediction Modulation (Wei, Hu, Du, Wen, TPAMI 2024), as BML_TPAMI2024 at
4b3aa4f (code/models/Classifier.py `execute_drop`; docs: ../shared/docs/methods/opm.md §3).

Per step, inside the inclusive epoch window [start_epoch, end_epoch], between encoders and head:
  s_m    = summed true-class softmax of the head's unimodal estimate on the UNDROPPED features
  rho_m  = s_m / s_other;  q_m = clip(q_base * (1 + lam * tanh(relu(rho_m - 1))), 0, 1) if rho_m > 1
           else 0          (only the dominant modality can be dropped)
  with probability p_exe (one draw per step, for the whole batch):
     keep_{i,m} ~ Bernoulli(1 - q_m) per sample and modality (a drop zeroes the whole feature)
     theta = sum_m d_m q_m / sum_m d_m, and BOTH features are scaled by keep / (1 - theta)
The loss is the fused cross-entropy on the modulated features; evaluation is unchanged.
Every draw comes from the method's own generator on the device: no host sync, reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import II

from ..errors import ConfigError
from ..registry import METHODS
from .base import Method, MethodConfig, modality_scores, check_epoch_window


@dataclass
class OPMConfig(MethodConfig):
    q_base: float = 0.5             # BML argparse and train_opm.sh (its Config class says 0.4; BB uses 0.4)
    lam: float = 0.5                # lambda: how much a larger discrepancy raises q
    p_exe: float = 0.7              # probability that a step drops at all
    start_epoch: int = 6            # BML: no drop while epoch <= 5 (BB: 0)
    end_epoch: int = II("epochs")   # inclusive; to the last epoch
    noise_seed_offset: int = 4099   # the drop generator is seeded with seed + this


def drop_probabilities(score_a: torch.Tensor, score_v: torch.Tensor, q_base: float, lam: float) -> torch.Tensor:
    """[2] = (q_audio, q_visual): q_m = clip(q_base (1 + lam tanh(relu(rho_m - 1))), 0, 1) for the
    modality with rho_m > 1, 0 otherwise (both 0 at a tie)."""
    rho = torch.stack([score_a / score_v, score_v / score_a])      # [2] (rho_audio, rho_visual)
    q = (q_base * (1 + lam * torch.tanh(torch.relu(rho - 1)))).clamp(0.0, 1.0)
    return torch.where(rho > 1, q, torch.zeros_like(q))


def drop_and_rescale(feats: dict[str, torch.Tensor], q: torch.Tensor, u: torch.Tensor) -> dict[str, torch.Tensor]:
    """feats {audio [B, Da], visual [B, Dv]}, q [2], u [B, 2] uniform draws -> the modulated features:
    sample i keeps modality m when u[i, m] >= q_m (probability 1 - q_m), and both modalities are
    scaled by 1 / (1 - theta), theta = (Da q_a + Dv q_v) / (Da + Dv) (the reference's one shared rate)."""
    a, v = feats["audio"], feats["visual"]
    da, dv = a.shape[1], v.shape[1]  # Python ints: no host-to-device copy per step
    theta = (da * q[0] + dv * q[1]) / (da + dv)
    scale = (u >= q).to(q.dtype) / (1 - theta)                     # [B, 2]
    return {"audio": a * scale[:, :1].to(a.dtype), "visual": v * scale[:, 1:].to(v.dtype)}


@METHODS.register("opm")
class OPM(Method):
    Config = OPMConfig
    needs_two_modalities = True
    trace = ("mod/ratio", "mod/drop_audio", "mod/drop_visual")
    brief = {"q_a": "mod/drop_audio", "q_v": "mod/drop_visual"}

    @staticmethod
    def check_config(m) -> None:
        for key in ("q_base", "p_exe"):
            if not 0 <= m[key] <= 1:
                raise ConfigError(f"modulation.{key}={m[key]!r} is not allowed; expected a probability in [0, 1]")
        if m.lam < 0:
            raise ConfigError(f"modulation.lam={m.lam!r} is not allowed; expected a number >= 0")
        check_epoch_window(m)

    def __init__(self, cfg, model, *, device, seed):
        super().__init__(cfg, model, device=device, seed=seed)
        self.model = model
        self.q_base, self.lam, self.p_exe = float(cfg.q_base), float(cfg.lam), float(cfg.p_exe)
        self.start, self.end = int(cfg.start_epoch), int(cfg.end_epoch)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed + int(cfg.noise_seed_offset))
        self.zero2 = torch.zeros(2, device=device)
        self._q, self._ratio = self.zero2, None  # this step's, from transform_features to loss

    def transform_features(self, feats, batch, epoch):
        if not self.start <= epoch <= self.end:  # Python ints: no device sync
            self._q, self._ratio = self.zero2, None
            return feats
        with torch.no_grad():  # the score sees the undropped features and the pre-step head
            est = self.model.fuse({m: f.detach() for m, f in feats.items()})
            s = self.reduce(modality_scores(est, batch.label))
            run = torch.rand((), generator=self.generator, device=self.device) < self.p_exe
            q = drop_probabilities(s[0], s[1], self.q_base, self.lam) * run   # a skipped step drops nothing
            u = torch.rand(len(batch.label), 2, generator=self.generator, device=self.device)
        self._q, self._ratio = q, s[0] / s[1]
        return drop_and_rescale(feats, q, u)

    def loss(self, out, batch, epoch):
        loss, logs = super().loss(out, batch, epoch)  # the fused cross-entropy (+ probes' own losses)
        if self._ratio is not None:  # the ratio that decided the drop, not the one after it
            logs["mod/ratio"] = self._ratio
        return loss, logs | {"mod/drop_audio": self._q[0], "mod/drop_visual": self._q[1]}

    def after_backward(self, model, out, batch, epoch):
        return {}  # no gradient edit

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"].cpu())  # a CPU byte tensor, also for a CUDA generator
