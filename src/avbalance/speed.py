"""GPU speed settings (`speed.*`): applied on CUDA only, so a CPU run is the same program with or
without them. Shared by the trainer and scripts/bench_train.py (which must not import Hydra)."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn


def on_cuda(device: torch.device) -> bool:
    return torch.device(device).type == "cuda"


def configure(cfg, device: torch.device) -> None:
    """Process-wide switches. cudnn.benchmark times the convolution algorithms for each new input
    shape once (the first steps are slower) and keeps the fastest; results are not bit-identical
    between runs, as CUDA training already is not."""
    if on_cuda(device):
        torch.backends.cudnn.benchmark = bool(cfg.cudnn_benchmark)


def prepare_model(model: nn.Module, cfg, device: torch.device) -> nn.Module:
    """channels_last: NHWC weights, so the convolutions (and their outputs) run in the layout the
    tensor cores want; NCHW inputs are converted by the first convolution. compile: each encoder
    through torch.compile (the fusion head and the method stay eager: they change per method)."""
    if on_cuda(device) and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        for enc in model.encoders.values():
            enc.compile(mode=str(cfg.compile_mode))
    return model


def fused_optimizer(cfg, device: torch.device) -> bool:
    """The optimizer's fused CUDA kernel (one launch for all parameters; the same update rule)."""
    return on_cuda(device) and bool(cfg.fused_optimizer)


COMPILE_GRAPHS = ("reduce-overhead", "max-autotune")  # torch.compile modes with triton.cudagraphs on


def cuda_graph_refusal(cfg, device: torch.device, world: int, method) -> str | None:
    """Why speed.cuda_graph cannot apply to this run (None: it can). CPU runs ignore it, as every
    speed setting; on CUDA the step must be a plain one of a method that declares itself replayable."""
    if not getattr(cfg, "cuda_graph", False):
        return "off"
    if not on_cuda(device):
        return "not on CUDA"
    if world > 1:
        return f"{world} processes (DDP's gradient all-reduce is not captured)"
    if not method.graph_safe:
        return f"modulation={method.cfg.name} has per-step host work a replay would skip (graph_safe = False)"
    if getattr(cfg, "compile", False) and str(cfg.compile_mode) in COMPILE_GRAPHS:
        # inductor would record and replay its own graphs (and sync) inside the step's capture
        return (f"speed.compile_mode={cfg.compile_mode} makes CUDA graphs of its own; with speed.cuda_graph use "
                f"speed.compile_mode=default or max-autotune-no-cudagraphs")
    return None


class GraphedStep:
    """speed.cuda_graph: the training step (forward, loss, backward, the method's gradient edit, the
    optimizer step) captured once into a CUDA graph and replayed for every full batch, so the host
    launches one graph instead of hundreds of kernels.

    Per call: a partial batch runs eagerly. The first `warmup` full batches after a change of key run
    eagerly on a side stream (they make the gradients, momentum buffers, the method's buffers and
    cuDNN's plans, as capture requires); the next one is copied into static tensors, captured, and
    replayed; later ones are copied in and replayed. The key is (method.graph_key(epoch), the groups'
    learning rates): what a replay cannot see changing (an epoch window, a scheduler's new rate) makes
    a new capture. The method's own CUDA generators (GE's noise) are registered with the graph, so each
    replay draws anew from them. Returns (loss, logs) as copies: the graph's outputs are overwritten by
    the next replay. The step must make no host sync and keep no per-step Python state."""

    def __init__(self, step, method, optimizer, batch_size: int, warmup: int = 3):
        self.step, self.method, self.optimizer = step, method, optimizer
        self.batch_size, self.warmup = batch_size, warmup
        self.key, self.graph, self.static, self.outputs = None, None, None, None
        self.warm = self.captures = self.replays = 0
        self.side = None  # the warm-up stream, made on first use

    def __call__(self, batch, epoch: int):
        if len(batch) != self.batch_size:  # the epoch's last, partial batch: another shape
            return self.step(batch, epoch)
        key = (self.method.graph_key(epoch), tuple(float(g["lr"]) for g in self.optimizer.param_groups))
        if key != self.key:
            self.key, self.graph, self.static, self.outputs, self.warm = key, None, None, None, 0
        if self.graph is None:
            if self.warm < self.warmup:
                self.warm += 1
                return self._eager_warmup(batch, epoch)
            self.static = dataclasses.replace(batch, **{f.name: getattr(batch, f.name).clone()
                                                        for f in dataclasses.fields(batch)})
            self.graph = self._capture(lambda: self.step(self.static, epoch))
            self.captures += 1
        for f in dataclasses.fields(batch):  # the batch into the tensors the graph reads
            getattr(self.static, f.name).copy_(getattr(batch, f.name))
        self._replay(self.graph)
        self.replays += 1
        loss, logs = self.outputs
        return loss.clone(), {k: v.clone() for k, v in logs.items()}

    # the CUDA parts, one method each (a CPU test stands in for them)
    def _eager_warmup(self, batch, epoch):
        self.side = self.side or torch.cuda.Stream()
        main = torch.cuda.current_stream()
        self.side.wait_stream(main)  # after the batch was made, and after the readers of the last step's outputs
        with torch.cuda.stream(self.side):
            out = self.step(batch, epoch)
        main.wait_stream(self.side)  # the caller reads the outputs on the main stream
        return out

    def _capture(self, fn):
        graph = torch.cuda.CUDAGraph()
        for gen in self.method.graph_generators():
            graph.register_generator_state(gen)
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward makes the gradients in the graph's pool
        # thread_local: the loader's reader thread may pin memory meanwhile (speed.preload=off); that is not
        # part of the graph and must not fail the capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.outputs = fn()
        return graph

    def _replay(self, graph) -> None:
        graph.replay()
