"""The training loop. Reads top to bottom; never names a dataset, fusion or method."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from omegaconf import OmegaConf
from tqdm import tqdm

from . import distributed, speed
from .config import resolve_device, validate
from .errors import ConfigError, DataNotPreparedError, NonFiniteLossError
from .diagnostics import linear_probe, missing_modality
from .evaluate import evaluate
from .logger import NoLogger, build_logger
from .meter import DeviceMeter
from .methods.base import Method
from .models import build_model
from .optim import build_optimizer, build_scheduler, load_optimizer_state
from .plots import plot_run
from .data import build_data
from .registry import METHODS
from .rundir import CheckpointWriter, MetricsLog, atomic_write_text, load_checkpoint, meta, write_json

log = logging.getLogger("avbalance")


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    # .cpu(): the checkpoint is loaded onto the run's device, and RNG states are CPU byte tensors
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _steps_csv(path: Path, start_epoch: int, last_steps: list | None = None, trace: tuple = Method.trace,
               write: bool = True) -> list[tuple]:
    """Per-step modulation trace, one column per key of the method's `trace`; on resume, rows of
    epochs >= start_epoch and unreadable rows are dropped, and the checkpoint's own epoch is taken
    from the checkpoint."""
    rows = []
    if start_epoch > 0 and path.exists():
        for line in path.read_text().splitlines()[1:]:
            parts = line.split(",")
            try:
                row = (int(parts[0]), int(parts[1]), *map(float, parts[2:]))
            except ValueError:  # a line cut by a crash during the write
                continue
            if row[0] < start_epoch and len(row) == 2 + len(trace):
                rows.append(row)
    if last_steps:  # the checkpoint's own epoch comes from the checkpoint: its lines may be cut
        rows = [r for r in rows if r[0] != last_steps[0][0]] + [tuple(r) for r in last_steps]
    header = ",".join(["epoch", "step"] + [k.removeprefix("mod/") for k in trace])
    if write:  # under DDP only rank 0 writes; every process keeps the rows
        atomic_write_text(path, header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return rows


class Forward(nn.Module):
    """encode -> the method's feature transform -> fuse: the part of a step that DDP wraps (its
    forward prepares the gradient all-reduce that the backward then runs)."""

    def __init__(self, model: nn.Module, method: Method):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, batch, epoch: int):
        feats = self.model.encode(batch.audio, batch.visual)
        feats = self.method.transform_features(feats, batch, epoch)
        return self.model.fuse(feats)


def check_ddp(cfg, env: distributed.Env, device: torch.device, data) -> None:
    method = METHODS.get(cfg.modulation.name)
    if not method.supports_ddp:
        ok = [m for m in METHODS.names() if METHODS.get(m).supports_ddp]
        raise ConfigError(f"modulation={cfg.modulation.name} does not support multi-process training ({env.world} processes); "
                          f"expected one process or modulation={' | '.join(ok)}")
    if cfg.ddp.sync_batchnorm and device.type != "cuda":
        raise ConfigError("ddp.sync_batchnorm=true needs CUDA devices (SyncBatchNorm has no CPU kernel); set ddp.sync_batchnorm=false")
    if cfg.batch_size < env.world:
        raise ConfigError(f"batch_size={cfg.batch_size} is the global batch, shared by {env.world} processes; "
                          f"expected batch_size >= {env.world}")
    if data.num_rows("train") < env.world:
        raise ConfigError(f"dataset '{cfg.dataset.name}': {data.num_rows('train')} train rows for {env.world} processes; "
                          f"expected at least one row per process")


def train(cfg, run_dir: Path, choices: dict | None = None, callbacks=()) -> dict:
    """Train one run into `run_dir`; returns the summary. `callbacks(epoch, row)` run after each
    epoch's checkpoint is written (tests use them to interrupt a run). Under torchrun every process
    calls this; rank 0's `run_dir` is used and only rank 0 writes (distributed.py)."""
    validate(cfg)
    env, device = distributed.setup(resolve_device(cfg.device), cfg.ddp.backend)
    main = env.main
    run_dir = Path(distributed.broadcast(str(run_dir)))
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        log.setLevel(logging.WARNING)  # one copy of the epoch lines: rank 0's
    ckpt_dir = run_dir / "ckpt"
    choices = dict(choices or {})

    shard = {"rank": env.rank, "world": env.world} if env.world > 1 else {}  # each process its share of every batch
    data = build_data(cfg, device, **shard)
    if env.world > 1:
        check_ddp(cfg, env, device, data)
    if data.num_batches(data.selection_split) == 0:
        raise ConfigError(f"dataset '{cfg.dataset.name}': the selection split '{data.selection_split}' is empty; expected at "
                          f"least one clip to select the epoch on (set dataset.selection_split=<a split with clips>)")
    torch.manual_seed(cfg.seed)  # model init depends on the seed only, not on what came before
    model = build_model(cfg.model, cfg.fusion, data.num_classes).to(device)
    speed.configure(cfg.speed, device)
    model = speed.prepare_model(model, cfg.speed, device)  # before the method keeps its parameter lists
    if cfg.ddp.sync_batchnorm and env.world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    method = METHODS.get(cfg.modulation.name)(cfg.modulation, model, device=device, seed=cfg.seed)
    data = method.prepare_data(data)  # e.g. a held-out part of train (G-Blending); usually `data` itself
    graph_refusal = speed.cuda_graph_refusal(cfg.speed, device, env.world, method)
    optimizer = build_optimizer(cfg.optim, method.param_groups(model), fused=speed.fused_optimizer(cfg.speed, device),
                                capturable=graph_refusal is None)
    scheduler = build_scheduler(cfg.optim, optimizer)
    # a captured region must not reuse casts autocast cached outside it: no cache when graphing
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16",  # noqa: E731
                                      cache_enabled=graph_refusal is not None)
    ctx = {"model": model, "data": data, "optimizer": optimizer, "run_dir": run_dir}  # what the method's hooks see
    forward = Forward(model, method)
    if env.world > 1:  # gradients averaged over processes during backward, before the method edits them
        if "unimodal" in model.aux and getattr(model.head, "unimodal", None) == "probe" and not cfg.ddp.find_unused_parameters:
            raise ConfigError(f"modulation={cfg.modulation.name} replaces the unimodal probes of fusion.unimodal=probe with "
                              f"its own heads, so the probes get no gradient and DDP stops at the second step; set "
                              f"fusion.unimodal=native or ddp.find_unused_parameters=true")
        forward = nn.parallel.DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None,
                                                      find_unused_parameters=cfg.ddp.find_unused_parameters)

    def step(batch, epoch):
        """The standard training step (a method's `train_step` may replace or wrap it)."""
        with autocast():
            out = forward(batch, epoch)
            loss, logs = method.loss(out, batch, epoch)
        optimizer.zero_grad(set_to_none=True)
        method.backward(loss)
        logs |= method.after_backward(model, out, batch, epoch)  # modulates this step's raw gradients
        optimizer.step()
        return loss, logs

    if graph_refusal is None:
        step = speed.GraphedStep(step, method, optimizer, cfg.batch_size)
    elif graph_refusal != "off":
        log.info("speed.cuda_graph: not used: %s", graph_refusal)

    start_epoch, best, last_log = 0, {"epoch": -1, "acc": -1.0, "metrics": {}}, {}
    if cfg.resume:
        last = ckpt_dir / "last.pt"
        if not last.exists():
            raise ConfigError(f"resume=true but {run_dir} has no checkpoint yet ({last.name} is written every ckpt_every={cfg.ckpt_every} epochs); "
                              f"start the run again without resume=true")
        state = load_checkpoint(last, map_location=device)
        model.load_state_dict(state["model"])
        load_optimizer_state(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        method.load_state_dict(state["method"])
        _set_rng_state(state["rng"], device)
        start_epoch, best, last_log = state["epoch"] + 1, state["best"], state.get("log", {})
        # a crash between writing best.pt and last.pt leaves a best.pt newer than last.pt's record:
        # the record follows the file, so that test/* always describes the weights in best.pt
        if (ckpt_dir / "best.pt").exists():
            best = load_checkpoint(ckpt_dir / "best.pt", map_location="cpu")["best"]
        log.info("resumed from %s at epoch %d", last, start_epoch)
    else:
        if main:
            atomic_write_text(run_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
            write_json(run_dir / "meta.json", meta(device, choices, cfg.seed) | {"processes": env.world})
        method.pretrain(ctx)  # a fresh run only: what it makes is in the checkpoints or under run_dir
    metrics = MetricsLog(run_dir / "metrics.jsonl", start_epoch, last_log.get("row"), write=main)
    steps = _steps_csv(run_dir / "steps.csv", start_epoch, last_log.get("steps"), method.trace, write=main)
    logger = build_logger(cfg.logger, run_dir, OmegaConf.to_container(cfg, resolve=True)) if main else NoLogger()
    sel = data.selection_split
    # checkpoints: copied to the host at once, written while the next epoch trains (speed.async_checkpoint);
    # flushed before anything reads them (the callbacks, the final evaluation, the error message below)
    writer = CheckpointWriter(background=bool(cfg.speed.async_checkpoint))

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        method.on_epoch_start(epoch, ctx)
        meter = DeviceMeter(method.trace)
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        n_seen = 0
        bar = tqdm(data.train_batches(epoch, device), total=data.num_batches("train"), desc=f"epoch {epoch}",
                   leave=False, disable=None if main else True, file=sys.stderr)  # None: quiet when not a terminal
        for batch in bar:
            loss, logs = method.train_step(step, batch, epoch, ctx)
            meter.add(logs)
            nonfinite |= ~torch.isfinite(loss.detach())  # a device flag: read once, at the epoch's end
            n_seen += len(batch)
        if n_seen == 0:
            raise DataNotPreparedError(f"the train split of dataset '{cfg.dataset.name}' gave no batch; prepare it again (see data_prep/README.md)")
        means, traces = meter.read(distributed.all_mean)  # the epoch's one host sync of the training metrics
        if env.world > 1:  # every process stops together; samples/s counts all of them
            nonfinite = distributed.all_max(nonfinite.float()).bool()
            n_seen = int(distributed.all_sum(torch.tensor(n_seen, device=device)).item())
            distributed.broadcast_buffers(model)  # BatchNorm statistics: rank 0's, as in its checkpoint
        if nonfinite.item():
            writer.flush()
            kept = f"last good checkpoint kept in {ckpt_dir}" if (ckpt_dir / "last.pt").exists() else "no checkpoint was saved"
            raise NonFiniteLossError(f"non-finite training loss in epoch {epoch}; run stopped, {kept} (try a lower optim.lr or precision=fp32)")
        t1 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]  # methods that scale a group's rate log their scales (mod/*)
        scheduler.step()
        val = evaluate(model, data, sel, device, cfg.precision)  # ends with its host transfer: timed whole
        t2 = time.perf_counter()
        method.on_epoch_end(epoch, ctx | {"val": val})  # after validation: methods driven by it (MSLR)

        row = {"epoch": epoch, **{k: v for k, v in means.items() if not k.startswith("mod/")},
               **{f"val/{k}": v for k, v in val.items()},
               **{f"{k}_mean": v for k, v in means.items() if k.startswith("mod/")}, "lr": lr,
               "epoch_seconds": t2 - t0, "samples_per_second": n_seen / (t1 - t0),
               "val_samples_per_second": data.num_rows(sel) / (t2 - t1)}
        new_steps = [(epoch, i, *vals) for i, vals in enumerate(zip(*(traces[k] for k in method.trace)))]
        if val["acc"] > best["acc"]:
            best = {"epoch": epoch, "acc": val["acc"], "metrics": {f"val/{k}": v for k, v in val.items()}}
            if main:
                writer.save(ckpt_dir / "best.pt", {"model": model.state_dict(), "epoch": epoch, "best": best})
        # last.pt (with the optimizer state, ~180 MB for two ResNet-18s) every ckpt_every epochs and
        # at the end; a resume then repeats the epochs after it
        if main and ((epoch + 1) % cfg.ckpt_every == 0 or epoch == cfg.epochs - 1):
            writer.save(ckpt_dir / "last.pt", {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "method": method.state_dict(), "epoch": epoch, "best": best, "rng": _rng_state(device),
                "log": {"row": row, "steps": new_steps}})
        distributed.barrier()  # the processes stay in step, epoch by epoch
        # logs after the checkpoint is saved, which also holds them: a crash before its file lands (or a
        # truncated line) is repaired from the checkpoint on resume, which drops the lines past it
        metrics.append(row)
        if main:
            with open(run_dir / "steps.csv", "a") as f:
                f.writelines(",".join(map(str, r)) + "\n" for r in new_steps)
        steps += new_steps
        logger.log(row, step=epoch)
        brief = " ".join(f"{label} {row[key + '_mean']:.3f}" for label, key in method.brief.items())
        log.info("epoch %d  loss %.4f  %s acc %.4f (audio %.4f, visual %.4f)  %s  %.0f samples/s",
                 epoch, row["train/loss"], sel, val["acc"], val["acc_audio"], val["acc_visual"], brief,
                 row["samples_per_second"])
        if callbacks:
            writer.flush()
        for cb in callbacks:
            cb(epoch, row)
    writer.flush()
    distributed.barrier()  # rank 0's files are written: every process reads best.pt below

    summary = {"status": "ok", "protocol": cfg.protocol.name, "selected_epoch": best["epoch"], "selection_split": sel,
               "best": best["metrics"], "last": metrics.rows[-1] if metrics.rows else {}, "choices": choices,
               "seed": cfg.seed, "epochs": cfg.epochs, "dataset": cfg.dataset.name}
    if sel == "test":  # protocol=paper: the epoch was selected on test, as the reference reports it
        summary.update({f"test/{k[4:]}": v for k, v in best["metrics"].items()})
        summary.update({f"last_test/{k[4:]}": v for k, v in summary["last"].items() if k.startswith("val/")})
    elif "test" in data.split_names:
        # the test split is measured only here: on the last and on the selected checkpoint
        summary.update({f"last_test/{k}": v for k, v in evaluate(model, data, "test", device, cfg.precision).items()})
    # diagnostics of the selected checkpoint: each input zeroed in turn, and (probe.enabled) linear
    # probes trained on its frozen encoders
    model.load_state_dict(load_checkpoint(ckpt_dir / "best.pt", map_location=device)["model"])
    if "test" in data.split_names:
        if sel != "test":
            summary.update({f"test/{k}": v for k, v in evaluate(model, data, "test", device, cfg.precision).items()})
        summary.update({f"test/{k}": v for k, v in missing_modality(model, data, "test", device, cfg.precision).items()})
    if cfg.probe.enabled:
        summary.update(linear_probe(model, data, device, epochs=cfg.probe.epochs, lr=cfg.probe.lr, seed=cfg.seed,
                                    precision=cfg.precision))
    if main:
        write_json(run_dir / "summary.json", summary)
        plot_run(metrics.rows, steps, run_dir / "curves.png", method.trace)
    logger.finish()
    return summary


def format_summary(summary: dict) -> str:
    """The short table a run ends with: fused, audio-only and visual-only accuracy."""
    lines = [f"{'':<24}{'fused':>8}{'audio':>8}{'visual':>8}"]
    b = summary["best"]
    lines.append(f"{summary['selection_split'] + ' (epoch ' + str(summary['selected_epoch']) + ')':<24}"
                 f"{b['val/acc']:>8.4f}{b['val/acc_audio']:>8.4f}{b['val/acc_visual']:>8.4f}")
    if summary["selection_split"] == "test":
        lines.append("(epoch selected on the TEST set: protocol=paper, the reference's protocol; not an unbiased estimate)")
    elif "test/acc" in summary:
        lines.append(f"{'test (selected epoch)':<24}{summary['test/acc']:>8.4f}{summary['test/acc_audio']:>8.4f}{summary['test/acc_visual']:>8.4f}")
    return "\n".join(lines)
