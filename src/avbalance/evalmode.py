"""`mode=eval`: a saved checkpoint measured on every split of its data, with per-sample predictions.

    python train.py mode=eval ckpt=<run>/ckpt/best.pt hydra.run.dir=<run>
      -> <run>/eval.json, <run>/predictions_<split>.csv
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from . import distributed
from .config import resolve_device, validate
from .diagnostics import linear_probe, missing_modality
from .errors import ConfigError
from .evaluate import PRED_COLUMNS, evaluate
from .models import build_model
from .data import build_data
from .registry import METHODS
from .rundir import atomic_write_text, load_checkpoint, write_json


def read_checkpoint(path: Path, device) -> dict:
    """-> the checkpoint dict, whose "model" is a state dict; one-line ConfigError otherwise."""
    if not path.is_file():
        raise ConfigError(f"ckpt={path}: no such file (expected a run's ckpt/best.pt or ckpt/last.pt)")
    try:
        state = load_checkpoint(path, map_location=device)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:  # torch's own text is pages long
        raise ConfigError(f"ckpt={path} is not a readable checkpoint (not a torch.save file, or cut short: "
                          f"{type(e).__name__})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ConfigError(f"ckpt={path} holds no model weights (expected a run's ckpt/best.pt or ckpt/last.pt)")
    return state


def load_weights(model: torch.nn.Module, weights: dict, path: Path) -> None:
    """model.load_state_dict(weights), with a one-line ConfigError naming the first keys that do not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and own[k].shape != weights[k].shape]
    if missing or unexpected or shapes:
        parts = ([f"missing keys {missing[:3]}"] if missing else []) + ([f"unexpected keys {unexpected[:3]}"] if unexpected else [])
        parts += [f"{k} is {list(weights[k].shape)} in the file, {list(own[k].shape)} in the model" for k in shapes[:1]]
        raise ConfigError(f"ckpt={path} does not fit the config (a different model, fusion or dataset?): {'; '.join(parts)}")
    model.load_state_dict(weights)


def predictions_csv(preds: dict[str, torch.Tensor]) -> str:
    """{column: [N]} (evaluate(..., predictions=True)) -> CSV text, one row per sample."""
    cols = [preds[c].tolist() for c in PRED_COLUMNS]
    return ",".join(PRED_COLUMNS) + "\n" + "".join(",".join(map(str, row)) + "\n" for row in zip(*cols))


def format_eval(result: dict, splits: list[str]) -> str:
    """The short table mode=eval prints: accuracy per head, fused macro-F1 and mAP per split."""
    w = max([8] + [len(s) + 2 for s in splits])
    lines = [f"{'':<{w}}{'fused':>8}{'audio':>8}{'visual':>8}{'f1':>8}{'mAP':>8}"]
    for s in splits:
        lines.append(f"{s:<{w}}" + "".join(f"{result[f'{s}/{k}']:>8.4f}" for k in ("acc", "acc_audio", "acc_visual", "f1", "map")))
    for k in result:
        if k.endswith("/acc_without_audio"):
            s = k.split("/")[0]
            lines.append(f"{s} fused acc without audio {result[k]:.4f}, without visual {result[f'{s}/acc_without_visual']:.4f}")
        elif k.startswith("probe/") and "/acc_" in k:
            lines.append(f"{k} {result[k]:.4f}")
    return "\n".join(lines)


def run_eval(cfg, ckpt: Path, out_dir: Path) -> dict:
    """Evaluate the checkpoint `ckpt` under `cfg` (its run's config) on every split of the data, and
    the fused model with each input zeroed on test (the selection split without one), and with
    probe.enabled linear probes on the frozen encoders (diagnostics.linear_probe). Writes
    out_dir/eval.json and out_dir/predictions_<split>.csv, prints a table.
    -> {"ckpt", "epoch", "<split>/<metric>" for every split and metric of evaluate(),
        "<test>/acc_without_audio", "<test>/f1_without_audio", "<test>/acc_without_visual", "<test>/f1_without_visual",
        with probe.enabled "probe/<split>/acc_<modality>", "probe/<split>/f1_<modality>"}"""
    validate(cfg)
    world = distributed.env().world
    if world > 1:  # every process would write the same files, each on the first GPU
        raise ConfigError(f"mode=eval runs in one process, got {world} (torchrun or a SLURM job with several tasks); "
                          f"run it with python train.py")
    device = resolve_device(cfg.device)
    ckpt, out_dir = Path(ckpt), Path(out_dir)
    state = read_checkpoint(ckpt, device)  # before the data: a wrong path fails at once
    # as trainer.train: the data first, then the seed, then the model
    data = build_data(cfg, device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.fusion, data.num_classes).to(device)
    METHODS.get(cfg.modulation.name)(cfg.modulation, model, device=device, seed=cfg.seed)  # adds its modules (model.aux)
    load_weights(model, state["model"], ckpt)

    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"ckpt": str(ckpt), "epoch": state.get("epoch")}
    for split in data.split_names:
        metrics, preds = evaluate(model, data, split, device, cfg.precision, predictions=True)
        result.update({f"{split}/{k}": v for k, v in metrics.items()})
        atomic_write_text(out_dir / f"predictions_{split}.csv", predictions_csv(preds))
    split = "test" if "test" in data.split_names else data.selection_split
    result.update({f"{split}/{k}": v for k, v in missing_modality(model, data, split, device, cfg.precision).items()})
    probe = cfg.get("probe")
    if probe is not None and probe.enabled:
        result.update(linear_probe(model, data, device, epochs=probe.epochs, lr=probe.lr, seed=cfg.seed, precision=cfg.precision))
    write_json(out_dir / "eval.json", result)
    print(format_eval(result, data.split_names))
    return result
