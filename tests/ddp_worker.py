"""`torchrun --nproc_per_node=N tests/ddp_worker.py <dump dir> <train.py arguments>`: train.py as a
user runs it, and then each process dumps what the DDP tests compare (test_ddp.py): its weights
after the last epoch (replicas must be identical) and after the reload of best.pt and the test split's predictions (gathered over processes)."""
import os
import runpy
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import avbalance.trainer as trainer
from avbalance.data.toy import ToyData

ROOT = Path(__file__).resolve().parents[1]
seen = {"eval_rows": {}}
real_evaluate = trainer.evaluate
real_eval_batches = ToyData.eval_batches
real_train_batches = ToyData.train_batches


def counting_train_batches(self, epoch, device=None, rows=None):  # rows this process trained on, per epoch
    for b in real_train_batches(self, epoch, device, rows):
        seen.setdefault("train_rows", {}).setdefault(epoch, []).extend(b.index.tolist())
        yield b


def counting_eval_batches(self, split, device=None, rows=None):  # rows this process evaluated, per split
    for b in real_eval_batches(self, split, device, rows):
        seen["eval_rows"][split] = seen["eval_rows"].get(split, 0) + len(b)
        yield b


def spy(model, data, split, *args, **kwargs):  # the trainer's evaluate, recording its model and data
    seen["model"], seen["data"] = model, data
    if split == data.selection_split:  # each epoch's validation: the replica as trained so far
        seen["trained"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return real_evaluate(model, data, split, *args, **kwargs)


if __name__ == "__main__":
    dump = Path(sys.argv.pop(1))
    trainer.evaluate = spy
    ToyData.eval_batches = counting_eval_batches
    ToyData.train_batches = counting_train_batches
    dist.init_process_group("gloo")  # train() joins this group; the dump below uses it too
    rank = dist.get_rank()
    sys.argv[0] = str(ROOT / "train.py")
    try:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    model, data = seen["model"], seen["data"]
    eval_rows = dict(seen["eval_rows"])  # before the dump's own evaluation below
    _, pred = real_evaluate(model, data, "test", torch.device("cpu"), predictions=True)
    dump.mkdir(parents=True, exist_ok=True)
    torch.save({"state": model.state_dict(), "trained": seen["trained"], "pred": pred, "eval_rows": eval_rows, "train_rows": seen.get("train_rows", {}), "world": dist.get_world_size(),
                "local_rank": int(os.environ["LOCAL_RANK"])}, dump / f"rank{rank}.pt")
    dist.destroy_process_group()
