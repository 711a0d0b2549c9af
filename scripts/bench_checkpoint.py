"""How long the training loop waits for a checkpoint of the CREMA-D model (two ResNet-18s and the
SGD momentum: the trainer's last.pt, ~170 MiB): written in line, or copied to host memory and written
by a background thread (speed.async_checkpoint, the default).

    python scripts/bench_checkpoint.py [--repeats 5] [--device cpu|cuda]

Prints the blocking time of each save and the time until the file is on disk (page cache).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "scripts")]

import bench_train  # noqa: E402
from avbalance.rundir import CheckpointWriter  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", choices=sorted(bench_train.SHAPES), default="cremad")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    sp = SimpleNamespace(channels_last=True, cudnn_benchmark=True, fused_optimizer=True, compile=False,
                         compile_mode="default")
    model, method, opt = bench_train.build(bench_train.SHAPES[args.shape], "concat", "ogm_ge", device, sp)
    for q in model.parameters():
        q.grad = torch.zeros_like(q)
    opt.step()  # the momentum buffers, as after the first epoch
    state = lambda: {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 0}  # noqa: E731
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for background in (False, True):
            w = CheckpointWriter(background=background)
            blocked, total = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                w.save(Path(tmp) / "last.pt", state())
                blocked.append(time.perf_counter() - t0)
                w.flush()
                total.append(time.perf_counter() - t0)
            size = (Path(tmp) / "last.pt").stat().st_size
            res["background" if background else "in line"] = {"blocked_s": statistics.median(blocked),
                                                               "written_s": statistics.median(total), "bytes": size}
    for k, r in res.items():
        print(f"{k:<11} the loop waits {1000 * r['blocked_s']:7.1f} ms (median of {args.repeats}); "
              f"file written after {1000 * r['written_s']:7.1f} ms; {r['bytes'] / 2**20:.0f} MiB on {device}")
    return res


if __name__ == "__main__":
    main()
