"""Training-step benchmark: samples/s, the step-time breakdown (data, forward, backward, modulation,
optimizer), peak memory and evaluation samples/s of the real model, method and optimizer on
synthetic batches already on the device. No Hydra: it imports torch, torchvision and the avbalance
modules it uses, so a GPU machine needs only those wheels (plus numpy).

    python scripts/bench_train.py --shape cremad --device cuda --precision bf16 --compare --json out.json
    python scripts/bench_train.py --shape tiny --device cpu --steps 3 --warmup 1

--data augment (default): each step starts from the stored format (uint8 frames at 256x256 and a
float16 spectrogram, on the device) and runs the loader's device-side work (crop boxes drawn on the
host and copied pinned, RandomResizedCrop + flip + normalise): the "data" phase. --data memory:
ready float batches, the data phase only picks one. Neither reads files (scripts/bench_data.py does).
--ge-micro: GE's modulation alone on the model's conv gradients, the previous owner-index form
against the current one and a candidate (time and bytes allocated per call).
--cuda-graph: forward, backward, the modulation and the optimizer captured as one CUDA graph and replayed
each step (the host then launches one graph instead of hundreds of kernels; the "forward" column holds
the whole graph): the trainer's speed.GraphedStep, as speed.cuda_graph=true runs it.
--parallel-encoders: the audio encoder on a second CUDA stream, overlapping the visual one (a measurement).
--profile N: N more steps under torch.profiler: the device's busy time against the wall time, kernels
launched and operators dispatched per step, and the heaviest kernels.
Timing: CUDA events between phases (one synchronisation at the end of the measured steps), or
perf_counter on the CPU. Peak memory: torch.cuda.max_memory_allocated, or on the CPU the process's
peak resident set (ru_maxrss, which includes Python and torch themselves).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src")]  # run from a checkout without installing

from avbalance.data.base import Batch  # noqa: E402
from avbalance.evaluate import evaluate  # noqa: E402
from avbalance.data.prepared import _to_device, random_resized_crop_boxes, train_frames  # noqa: E402
from avbalance.meter import DeviceMeter  # noqa: E402
from avbalance.methods.base import Method  # noqa: E402
from avbalance.methods.ogm import OGM, modulate_  # noqa: E402
from avbalance.models.model import build_model  # noqa: E402
from avbalance.optim import build_optimizer  # noqa: E402
from avbalance import speed  # noqa: E402

# dataset shape: batch, frames, stored frame side, fed frame side, spectrogram [F, T], classes, encoders
SHAPES = {
    "cremad": dict(batch=64, frames=1, stored=256, image=224, spec=(257, 188), classes=6, model="resnet18"),
    "mid": dict(batch=16, frames=1, stored=128, image=112, spec=(129, 94), classes=6, model="resnet18"),
    "tiny": dict(batch=8, frames=1, stored=40, image=32, spec=(32, 24), classes=6, model="tiny"),
}
PHASES = ("data", "forward", "backward", "modulation", "optimizer")


class Cfg(dict):
    """The dict-with-attributes that build_model and the methods read (what Hydra would give)."""
    __getattr__ = dict.__getitem__


def method_cfg(modulation: str) -> SimpleNamespace:
    return SimpleNamespace(name=modulation, alpha=0.8, beta=1.0, ge=modulation == "ogm_ge", start_epoch=0,
                           end_epoch=10**9, scope="conv", coefficient="tanh", noise_seed_offset=7919)


class Timer:
    """Marks between phases: CUDA events (read after one synchronisation) or host clocks."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[list] = []

    def mark(self, row: list) -> None:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            row.append(e)
        else:
            row.append(time.perf_counter())

    def phases_ms(self) -> dict[str, float]:
        """Mean milliseconds per phase over the recorded steps."""
        if self.cuda:
            torch.cuda.synchronize()
            per = [[a.elapsed_time(b) for a, b in zip(r, r[1:])] for r in self.marks]
        else:
            per = [[1000 * (b - a) for a, b in zip(r, r[1:])] for r in self.marks]
        return {p: sum(s[i] for s in per) / len(per) for i, p in enumerate(PHASES)}


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device), "peak_memory_kind": "cuda max_memory_allocated"}
    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_memory_kind": "process peak RSS (ru_maxrss), not resettable: the largest run so far"}


class MemoryData:
    """What evaluate() reads from a dataset, over batches already on the device (`reps` of them)."""

    def __init__(self, batches: list[Batch], num_classes: int, reps: int):
        self.batches, self.num_classes, self.reps = batches, num_classes, reps

    def num_rows(self, split: str) -> int:
        return self.reps * len(self.batches[0])

    def eval_batches(self, split: str, device=None, rows=None):
        return (self.batches[i % len(self.batches)] for i in range(self.reps))


def wait_for_all(folder: Path, rank: int, n: int, timeout: float = 600.0) -> None:
    """A file barrier for packed runs: process `rank` of `n` marks round r (its r-th timed
    configuration) ready and waits until all `n` have."""
    r = len(list(folder.glob(f"ready.{rank}.*")))
    (folder / f"ready.{rank}.{r}").touch()
    t0 = time.time()
    while len(list(folder.glob(f"ready.*.{r}"))) < n:
        if time.time() - t0 > timeout:
            raise TimeoutError(f"packed benchmark: {n} processes did not all reach the barrier in {folder}")
        time.sleep(0.005)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_data(shape: dict, device: torch.device, mode: str, n: int = 4):
    """`n` batches to cycle through: stored format (augment) or ready float batches (memory)."""
    g = torch.Generator().manual_seed(0)
    B, T, S, (F_, T_) = shape["batch"], shape["frames"], shape["stored"], shape["spec"]
    out = []
    for _ in range(n):
        audio = torch.randn(B, F_, T_, generator=g).half().to(device)
        label = torch.randint(0, shape["classes"], (B,), generator=g).to(device)
        if mode == "memory":
            visual = torch.randn(B, 3, T, shape["image"], shape["image"], generator=g).to(device)
            out.append(Batch(audio.float().unsqueeze(1), visual, label, torch.arange(B, device=device)))
        else:
            frames = torch.randint(0, 256, (B, T, S, S, 3), generator=g, dtype=torch.uint8).to(device)
            out.append((frames, audio, label))
    return out


def next_batch(data, i: int, shape: dict, device: torch.device, g: torch.Generator, mode: str) -> Batch:
    """The loader's per-batch work after the disk read (prepared.train_batches), or a ready batch."""
    if mode == "memory":
        return data[i % len(data)]
    frames, audio, label = data[i % len(data)]
    B, T, H, W, _ = frames.shape
    boxes = random_resized_crop_boxes(B * T, H, W, g)
    flips = torch.rand(B * T, generator=g) < 0.5
    visual = train_frames(frames, _to_device(boxes, device), _to_device(flips, device), shape["image"])
    return Batch(audio.float().unsqueeze(1), visual, label, torch.arange(B, device=device))


def speed_cfg(args) -> SimpleNamespace:
    """The trainer's `speed.*` settings from the command line (the same defaults)."""
    return SimpleNamespace(channels_last=args.channels_last, cudnn_benchmark=args.cudnn_benchmark,
                           fused_optimizer=args.fused_optimizer, compile=args.compile, compile_mode=args.compile_mode)


def build(shape: dict, fusion: str, modulation: str, device: torch.device, sp: SimpleNamespace):
    """Model, method and optimizer as the trainer builds them (trainer.train)."""
    torch.manual_seed(0)
    model_cfg = Cfg(name=shape["model"], **({"width": 8, "depth": 2} if shape["model"] == "tiny" else {}))
    model = build_model(model_cfg, Cfg(name=fusion), shape["classes"]).to(device)
    speed.configure(sp, device)
    model = speed.prepare_model(model, sp, device)
    method = (OGM if modulation != "none" else Method)(method_cfg(modulation), model, device=device, seed=0)
    optimizer = build_optimizer(SimpleNamespace(name="sgd", lr=1e-3, momentum=0.9, weight_decay=1e-4),
                                method.param_groups(model), fused=speed.fused_optimizer(sp, device))
    return model, method, optimizer


def run(args, modulation: str) -> dict:
    """One configuration: warm-up steps, then `steps` timed steps and `steps` evaluation batches."""
    device, shape = torch.device(args.device), dict(SHAPES[args.shape])
    if args.batch_size:
        shape["batch"] = args.batch_size
    model, method, optimizer = build(shape, args.fusion, modulation, device, speed_cfg(args))
    data = make_data(shape, device, args.data)
    g = torch.Generator().manual_seed(1)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")  # noqa: E731
    timer = Timer(device)
    meter, nonfinite = DeviceMeter(method.trace), torch.zeros((), dtype=torch.bool, device=device)
    encode = ParallelEncode(model, args.parallel_encoders)

    def step(i: int, row: list | None) -> None:  # the trainer's step(), with marks between its phases
        mark = timer.mark if row is not None else (lambda _: None)
        mark(row)
        batch = next_batch(data, i, shape, device, g, args.data)
        mark(row)
        with autocast():
            out = model.fuse(encode(batch.audio, batch.visual))
            loss, logs = method.loss(out, batch, 0)
        mark(row)
        optimizer.zero_grad(set_to_none=True)
        method.backward(loss)
        mark(row)
        logs |= method.after_backward(model, out, batch, 0)
        mark(row)
        optimizer.step()
        meter.add(logs)  # the trainer's per-step bookkeeping, on the device
        nonfinite.logical_or_(~torch.isfinite(loss.detach()))
        mark(row)

    model.train()
    if args.cuda_graph:  # the same phases' marks, around a replayed graph (warmed up and captured here)
        timed = graphed(data, shape, device, g, args, timer, meter, nonfinite, model, method, optimizer, encode)
    else:
        timed = step
        for i in range(args.warmup):
            step(i, None)
    sync(device)
    if args.barrier:  # packed runs: every process starts its timed steps together
        wait_for_all(Path(args.barrier), args.packed_rank, args.packed_of)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(args.steps):
        timer.marks.append([])
        timed(i, timer.marks[-1])
    sync(device)
    wall = time.perf_counter() - t0
    phases = timer.phases_ms()
    prof = profile_steps(lambda i: timed(i, None), args.profile, device) if args.profile else None

    B = shape["batch"]
    peak = peak_memory(device)
    del data
    evals, eval_peaks = {}, {}
    for eb in args.eval_batch_size or [B]:  # the real evaluate() over ready batches (eval_frames is a resize)
        mem = MemoryData(make_data(dict(shape, batch=eb), device, "memory", n=2), shape["classes"], args.steps)
        evaluate(model, MemoryData(mem.batches, shape["classes"], max(1, args.warmup)), "val", device, args.precision)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t1 = time.perf_counter()
        evaluate(model, mem, "val", device, args.precision)  # ends with its one host transfer
        evals[eb] = eb * args.steps / (time.perf_counter() - t1)
        eval_peaks[eb] = peak_memory(device)["peak_memory_bytes"]
        del mem
    return {"modulation": modulation, "batch_size": B, "steps": args.steps, "step_ms": 1000 * wall / args.steps,
            "samples_per_second": B * args.steps / wall, "phases_ms": phases,
            "eval_samples_per_second": evals[next(iter(evals))], "eval_samples_per_second_by_batch": evals,
            "eval_peak_memory_bytes_by_batch": eval_peaks, **peak, **({"profile": prof} if prof else {})}


def profile_steps(step, n: int, device: torch.device, top: int = 15) -> dict:
    """`--profile N`: N more steps under torch.profiler. Per step: wall time, the device's busy time
    (its kernels' summed durations; one stream, so they do not overlap), kernels launched and ATen
    operators dispatched by the host, and the kernels (or, on the CPU, the operators) that take the
    most time. Busy well under wall: the host, not the GPU, sets the pace."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for i in range(n):
            step(i)
        sync(device)
    wall = time.perf_counter() - t0
    events = prof.events()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    ops = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith("aten::")]
    timed = kernels or [e for e in ops if e.cpu_parent is None]  # CPU: top-level operators (nested ones are inside)
    by_name: dict[str, list[float]] = {}
    for e in timed:
        by_name.setdefault(e.name, []).append(e.time_range.elapsed_us() / 1000)
    heavy = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {"steps": n, "wall_ms_per_step": 1000 * wall / n,
            "device_busy_ms_per_step": sum(e.time_range.elapsed_us() for e in kernels) / 1000 / n if kernels else None,
            "kernels_per_step": len(kernels) / n, "aten_ops_per_step": len(ops) / n,
            "top": [{"name": k[:90], "ms_per_step": sum(v) / n, "calls_per_step": len(v) / n} for k, v in heavy]}


# ----------------------------------------------------------------------------- --parallel-encoders

class ParallelEncode:
    """`--parallel-encoders` (CUDA): the audio encoder on a side stream while the visual one runs on the
    current stream, joined before the fusion head, so that their kernels (small at batch 64) can overlap
    on the GPU; backward runs each encoder's kernels on the stream of its forward. A measurement for the
    trainer, which encodes one encoder after the other."""

    def __init__(self, model, enabled: bool):
        self.model, self.enabled = model, enabled
        self.side = torch.cuda.Stream() if enabled else None

    def __call__(self, audio: torch.Tensor, visual: torch.Tensor) -> dict:
        if not self.enabled:
            return self.model.encode(audio, visual)
        main = torch.cuda.current_stream()
        self.side.wait_stream(main)
        with torch.cuda.stream(self.side):
            fa = self.model.encoders["audio"](audio)
        fv = self.model.encoders["visual"](visual)
        main.wait_stream(self.side)
        fa.record_stream(main)  # made on the side stream, used (and freed) on this one
        return {"audio": fa, "visual": fv}


# ----------------------------------------------------------------------------- --cuda-graph: the step as one graph

def train_body(model, method, optimizer, b: Batch, bf16: bool, encode=None):
    """The trainer's step (trainer.train's `step`) with autocast's weight cache off, as the trainer has
    it under speed.cuda_graph (a captured region must not reuse casts cached outside it)."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
        out = model.fuse((encode or model.encode)(b.audio, b.visual))
        loss, logs = method.loss(out, b, 0)
    optimizer.zero_grad(set_to_none=True)
    method.backward(loss)
    logs |= method.after_backward(model, out, b, 0)
    optimizer.step()
    return loss, logs


def graphed(data, shape, device, g, args, timer, meter, nonfinite, model, method, optimizer, encode=None):
    """`--cuda-graph`: the trainer's speed.GraphedStep around the step (eager warm-up on a side stream,
    then one capture, then a replay per step: forward to optimizer in one launch); the batch is made
    eagerly and copied in. The per-step bookkeeping stays eager, as in the trainer."""
    gs = speed.GraphedStep(lambda b, e: train_body(model, method, optimizer, b, args.precision == "bf16", encode),
                           method, optimizer, shape["batch"])

    def step(i: int, row: list | None) -> None:
        mark = timer.mark if row is not None else (lambda _: None)
        mark(row)
        b = next_batch(data, i, shape, device, g, args.data)
        mark(row)
        loss, logs = gs(b, 0)
        mark(row)  # "forward": the whole replayed graph; backward, modulation and the optimizer are inside it
        mark(row)
        mark(row)
        meter.add(logs)
        nonfinite.logical_or_(~torch.isfinite(loss.detach()))
        mark(row)

    for i in range(max(args.warmup, gs.warmup + 2)):  # warm-up, capture and a replay before the timing
        step(i, None)
    assert gs.captures == 1 and gs.replays >= 1, (gs.captures, gs.replays)
    return step


# ----------------------------------------------------------------------------- GE alone: before / after

def owner_index_modulate_(grads, k, generator, owner):
    """The previous GE (up to commit 8857322): an int64 owner index per element, full-size noise
    drawn, gathered and multiplied each step. Kept here to measure the change."""
    k = k.to(grads[0].dtype)
    sigma = torch.stack([g.std() for g in grads]).nan_to_num_(0.0) + 1e-8
    noise = torch.randn(owner.shape, generator=generator, device=grads[0].device, dtype=grads[0].dtype)
    noise = noise * sigma.to(noise.dtype)[owner]
    torch._foreach_mul_(grads, k)
    torch._foreach_add_(grads, [n.view_as(g) for n, g in zip(noise.split([g.numel() for g in grads]), grads)])


def segment_std_modulate_(grads, k, generator, flat, offsets, inv_n, inv_n1):
    """A candidate GE with the per-tensor std in a fixed number of launches instead of one per tensor:
    the gradients copied into the noise buffer (one cat), then segment sums of x and x^2 (one-pass
    variance, so sigma differs from torch.std at float rounding). Not in the product until it pays
    on a GPU; measured here against the current form."""
    k = k.to(grads[0].dtype)
    flat = flat[:int(offsets[-1])]
    torch.cat([g.view(-1) for g in grads], out=flat)
    s1 = torch.segment_reduce(flat, "sum", offsets=offsets, unsafe=True)                  # [n_tensors]
    s2 = torch.segment_reduce(flat.square_(), "sum", offsets=offsets, unsafe=True)
    sigma = ((s2 - s1 * s1 * inv_n).clamp_(min=0) * inv_n1).sqrt_() + 1e-8
    z = [zt.view_as(g) for zt, g in zip(flat.normal_(generator=generator).split([g.numel() for g in grads]), grads)]
    torch._foreach_mul_(z, list(sigma.unbind()))
    torch._foreach_mul_(grads, k)
    torch._foreach_add_(grads, z)


def dispatched_ops(fn) -> int:
    """ATen operators one call dispatches (views included): the host's share of the work, and on CUDA
    close to the kernels it launches (a foreach op's slow path launches one per tensor, counted once)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))
    with Count():
        fn()
    return Count.n


def allocated_bytes(fn, device: torch.device) -> int:
    """Bytes allocated by one call (the sum of its allocations, freed or not)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_stats(device)["allocated_bytes.all.allocated"]
        fn()
        torch.cuda.synchronize()
        return torch.cuda.memory_stats(device)["allocated_bytes.all.allocated"] - before
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())  # each op's own allocations


def ge_micro(args) -> dict:
    """GE's modulation alone on both encoders' conv gradients of the chosen shape."""
    device, shape = torch.device(args.device), SHAPES[args.shape]
    model, method, _ = build(shape, args.fusion, "ogm_ge", device, speed_cfg(args))
    grads = {m: [torch.randn_like(p) for p in ps] for m, ps in method.params.items()}
    k = torch.tensor(0.7, device=device)
    owners = {m: torch.repeat_interleave(torch.tensor([g.numel() for g in gs])).to(device) for m, gs in grads.items()}
    buf = method._noise_buffer()  # the method's own (a NoiseBuffer: its views are kept across steps)
    gen = torch.Generator(device=device).manual_seed(0)
    seg = {}
    for m, gs in grads.items():  # the candidate's constants, made once: offsets, 1/n, 1/(n-1) (0 for n = 1)
        n = torch.tensor([g.numel() for g in gs], dtype=torch.float32)
        seg[m] = (torch.tensor([0] + [g.numel() for g in gs]).cumsum(0).to(device), (1 / n).to(device),
                  torch.where(n > 1, 1 / (n - 1).clamp(min=1), torch.zeros(())).to(device))
    impls = {"owner_index (previous)": lambda: [owner_index_modulate_(grads[m], k, gen, owners[m]) for m in grads],
             "flat buffer, views per call (e95ab05^)": lambda: [modulate_(grads[m], k, gen, buf.flat) for m in grads],
             "noise_buffer (current)": lambda: [modulate_(grads[m], k, gen, buf) for m in grads],
             "segment_std (candidate)": lambda: [segment_std_modulate_(grads[m], k, gen, buf.flat, *seg[m]) for m in grads],
             "scaling only (OGM, no GE)": lambda: [modulate_(grads[m], k) for m in grads]}
    persistent = {"owner_index (previous)": sum(o.numel() * o.element_size() for o in owners.values()),
                  "flat buffer, views per call (e95ab05^)": buf.flat.numel() * buf.flat.element_size(),
                  "noise_buffer (current)": buf.flat.numel() * buf.flat.element_size(),
                  "segment_std (candidate)": buf.flat.numel() * buf.flat.element_size(), "scaling only (OGM, no GE)": 0}
    out = {"elements": sum(g.numel() for gs in grads.values() for g in gs)}
    for name, fn in impls.items():
        for _ in range(max(1, args.warmup)):
            fn()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn()
        sync(device)
        out[name] = {"ms_per_step": 1000 * (time.perf_counter() - t0) / args.steps,
                     "bytes_allocated_per_step": allocated_bytes(fn, device), "persistent_bytes": persistent[name],
                     "aten_ops_per_step": dispatched_ops(fn)}
    return out


# ----------------------------------------------------------------------------- report

def median_run(runs: list[dict]) -> dict:
    """The run with the median step time (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r["step_ms"])[(len(runs) - 1) // 2]


def packed(args, argv: list[str]) -> dict:
    """`--packed N`: N copies of this benchmark as separate processes on the same device, their timed
    steps started together (a file barrier); samples/s is their sum, peak memory per process."""
    import tempfile
    n, child, skip = args.packed, [], False
    for a in argv:  # the same arguments less --packed N (and --json: each process writes its own)
        if not skip and not a.startswith(("--packed", "--json")):
            child.append(a)
        skip = a in ("--packed", "--json")
    with tempfile.TemporaryDirectory() as tmp:
        procs = [subprocess.Popen([sys.executable, __file__, *child, "--barrier", tmp, "--packed-rank", str(i),
                                   "--packed-of", str(n), "--json", str(Path(tmp) / f"{i}.json")],
                                  stdout=subprocess.DEVNULL) for i in range(n)]
        # a process that fails early would leave the others waiting at the barrier: stop them at once
        while any(proc.poll() is None for proc in procs) and not any(proc.poll() for proc in procs):
            time.sleep(0.05)
        if any(proc.poll() for proc in procs):
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            codes = [proc.wait() for proc in procs]
            raise SystemExit(f"packed benchmark: a process failed (exit codes {codes}; the others were stopped)")
        reports = [json.loads((Path(tmp) / f"{i}.json").read_text()) for i in range(n)]
    device = torch.device(args.device)
    report = {"environment": environment(device, argv), "processes": n, "per_process": reports, "packed": []}
    for j, r0 in enumerate(reports[0]["runs"]):
        rs = [rep["runs"][j] for rep in reports]
        report["packed"].append({"modulation": r0["modulation"], "samples_per_second": sum(r["samples_per_second"] for r in rs),
                                 "samples_per_second_each": [r["samples_per_second"] for r in rs],
                                 "peak_memory_bytes_each": [r["peak_memory_bytes"] for r in rs]})
    env = report["environment"]
    print(f"# {env['device']}, torch {env['torch']}, commit {env['commit']}; {n} processes packed, shape {args.shape}, "
          f"{args.precision}, data {args.data}, {args.steps} steps each")
    for r in report["packed"]:
        print(f"{r['modulation']:<12}{r['samples_per_second']:>11.1f} samples/s together  (each: "
              + ", ".join(f"{x:.0f}" for x in r["samples_per_second_each"]) + "; peak MiB each: "
              + ", ".join(f"{b / 2**20:.0f}" for b in r["peak_memory_bytes_each"]) + ")")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return report


def git_commit() -> str:
    """The checkout's commit (+ "-dirty"); AVBALANCE_COMMIT wins: a copy of the tree sent to another
    machine may carry no .git, or a stale one."""
    if os.environ.get("AVBALANCE_COMMIT"):
        return os.environ["AVBALANCE_COMMIT"]
    git = lambda *a: subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True).stdout.strip()  # noqa: E731
    try:
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except OSError:
        return "unknown"


def environment(device: torch.device, argv: list[str]) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU"
    return {"device": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "commit": git_commit(), "command": " ".join(["python scripts/bench_train.py", *argv])}


def table(results: list[dict]) -> str:
    head = f"{'modulation':<12}{'samples/s':>11}{'step ms':>10}" + "".join(f"{p:>12}" for p in PHASES) + f"{'eval/s':>10}{'peak MiB':>10}"
    lines = [head]
    for r in results:
        lines.append(f"{r['modulation']:<12}{r['samples_per_second']:>11.1f}{r['step_ms']:>10.2f}"
                     + "".join(f"{r['phases_ms'][p]:>12.2f}" for p in PHASES)
                     + f"{r['eval_samples_per_second']:>10.1f}{r['peak_memory_bytes'] / 2**20:>10.0f}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--fusion", default="concat", help="a registered fusion head (concat, sum, film, gated)")
    p.add_argument("--modulation", choices=("none", "ogm", "ogm_ge"), default="ogm_ge")
    p.add_argument("--compare", action="store_true", help="also run modulation=none and report the relative overhead")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--data", choices=("augment", "memory"), default="augment")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=0, help="0: the shape's own")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--eval-batch-size", type=int, nargs="+", help="evaluation batch sizes to time (default: the batch)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="speed.channels_last (CUDA)")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True, help="speed.cudnn_benchmark (CUDA)")
    p.add_argument("--fused-optimizer", action=argparse.BooleanOptionalAction, default=True, help="speed.fused_optimizer (CUDA)")
    p.add_argument("--compile", action="store_true", help="speed.compile: torch.compile the encoders")
    p.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                   default="default",
                   help="speed.compile_mode (reduce-overhead: CUDA graphs)")
    p.add_argument("--ge-micro", action="store_true", help="also time GE's modulation alone, previous vs current")
    p.add_argument("--parallel-encoders", action="store_true",
                   help="the two encoders on two CUDA streams, overlapping (CUDA only)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture forward to optimizer step as one CUDA graph, replayed per step (CUDA only)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="profile N more steps per run: device busy time, kernels and operators per step, the heaviest")
    p.add_argument("--repeats", type=int, default=1, help="runs per modulation, interleaved; the median run is reported")
    p.add_argument("--packed", type=int, default=1, help="N processes at once on one device (a packed sweep): their sum")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--barrier", help=argparse.SUPPRESS)  # set by --packed for its processes
    p.add_argument("--packed-rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--packed-of", type=int, default=1, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict:
    p = parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1 or args.packed < 1:
        p.error("--steps, --repeats and --packed must be >= 1 and --warmup >= 0")
    for flag in ("cuda_graph", "parallel_encoders"):
        if getattr(args, flag) and torch.device(args.device).type != "cuda":
            p.error(f"--{flag.replace('_', '-')} needs a CUDA device, got --device {args.device}")
    if args.cuda_graph and args.compile and args.compile_mode in speed.COMPILE_GRAPHS:
        p.error(f"--cuda-graph with --compile-mode {args.compile_mode}: that mode makes CUDA graphs of its own "
                f"(use default or max-autotune-no-cudagraphs)")
    if args.packed > 1:
        return packed(args, argv)
    device = torch.device(args.device)
    report = {"environment": environment(device, argv), "shape": {"name": args.shape, **SHAPES[args.shape]},
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    mods = ["none", args.modulation] if args.compare and args.modulation != "none" else [args.modulation]
    # interleaved (none, ogm_ge, none, ogm_ge, ...): slow drifts of the clock hit both alike
    runs = [run(args, m) for _ in range(args.repeats) for m in mods]
    report["all_runs"] = runs
    report["runs"] = [median_run([r for r in runs if r["modulation"] == m]) for m in mods]
    env = report["environment"]
    print(f"# {env['device']}, torch {env['torch']}, {env['threads']} threads, commit {env['commit']}; shape {args.shape} "
          f"(batch {report['runs'][0]['batch_size']}), {args.fusion}, {args.precision}, data {args.data}, {args.steps} steps"
          + (f", median of {args.repeats} runs" if args.repeats > 1 else ""))
    print(table(report["runs"]))
    if len(report["runs"]) == 2:
        base, mod = report["runs"]
        report["overhead"] = {"step_time": mod["step_ms"] / base["step_ms"] - 1,
                              "modulation_share": mod["phases_ms"]["modulation"] / mod["step_ms"],
                              "step_time_each_repeat": [runs[2 * i + 1]["step_ms"] / runs[2 * i]["step_ms"] - 1
                                                        for i in range(args.repeats)]}
        print(f"{args.modulation} vs none: step time {100 * report['overhead']['step_time']:+.1f}%, modulation phase "
              f"{100 * report['overhead']['modulation_share']:.1f}% of the step")
    for r in report["runs"]:
        if "profile" in r:
            pr = r["profile"]
            busy = pr["device_busy_ms_per_step"]
            print(f"profile, {r['modulation']}: {pr['wall_ms_per_step']:.2f} ms/step wall, "
                  + (f"device busy {busy:.2f} ms ({100 * busy / pr['wall_ms_per_step']:.0f}%), " if busy is not None else "")
                  + f"{pr['kernels_per_step']:.0f} kernels, {pr['aten_ops_per_step']:.0f} ATen ops per step; heaviest:")
            for t in pr["top"]:
                print(f"  {t['ms_per_step']:8.3f} ms {t['calls_per_step']:6.1f}x  {t['name']}")
    if args.ge_micro:
        report["ge_micro"] = ge_micro(args)
        print(f"GE alone on {report['ge_micro']['elements']:,} conv-gradient elements:")
        for name, r in report["ge_micro"].items():
            if isinstance(r, dict):
                print(f"  {name:<40}{r['ms_per_step']:>9.3f} ms/step {r['bytes_allocated_per_step']:>13,} B allocated/step "
                      f"{r['persistent_bytes']:>13,} B kept {r['aten_ops_per_step']:>5} ATen ops")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
