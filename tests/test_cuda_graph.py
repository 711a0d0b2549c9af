"""speed.cuda_graph: when the training step is replayed from a CUDA graph, and what GraphedStep does
per batch. On the CPU, stand-ins replace the three CUDA parts (warm-up on a side stream, capture,
replay): one with what they mean for the control flow (capture keeps the step over static tensors,
replay runs it), and one that emulates a replay (the step's recorded operators run again, none of its
Python), which checks every `graph_safe` method against the eager step. On CUDA (skipped without a GPU)
the real graph is checked against the eager step."""
import json
import logging
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from avbalance import speed
from avbalance.data.base import Batch
from avbalance.methods.base import Method
from avbalance.methods.ogm import OGM
from avbalance.registry import METHODS
from avbalance.trainer import train

from conftest import TIMINGS, make_cfg

CPU = torch.device("cpu")


class StandIn(speed.GraphedStep):
    """The CUDA parts as their meaning: `capture` records the step over the static batch without
    running it, `replay` runs it (into outputs that the next replay overwrites)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.events = []

    def _eager_warmup(self, batch, epoch):
        self.events.append("warm")
        return self.step(batch, epoch)

    def _capture(self, fn):
        self.events.append("capture")
        self.fn, self.outputs = fn, None
        return "graph"

    def _replay(self, graph):
        self.events.append("replay")
        self.outputs = self.fn()


def _batch(i, n=4):
    return Batch(torch.full((n, 1, 2, 2), float(i)), torch.full((n, 3, 1, 2, 2), float(-i)), torch.arange(n) % 2,
                 torch.arange(n) + 10 * i)


class Window:
    def __init__(self):
        self.generators = []

    def graph_key(self, epoch):
        return 1 <= epoch <= 2

    def graph_generators(self):
        return self.generators


def test_warm_up_then_capture_then_replay_with_eager_partial_batches_and_a_new_capture_per_key():
    seen = []

    def step(b, epoch):
        seen.append((epoch, b.audio[0, 0, 0, 0].item(), b.index.tolist()))
        return b.audio.sum(), {"x": b.visual.mean()}
    opt = SimpleNamespace(param_groups=[{"lr": 0.1}, {"lr": 0.2}], zero_grad=lambda set_to_none: None)
    g = StandIn(step, Window(), opt, batch_size=4, warmup=2)
    plan = [(0, 4), (0, 4), (0, 4), (0, 4), (0, 3),   # epoch 0: warm, warm, capture + replay, replay, partial
            (1, 4), (1, 4), (1, 4), (1, 4),           # epoch 1: inside the window, a new key
            (2, 4),                                   # epoch 2: the same window, a new rate
            (3, 4), (3, 4), (3, 4),                   # epoch 3: outside the window again
            (4, 4)]                                   # epoch 4: epoch 3's key: replayed at once
    outs = []
    for i, (epoch, n) in enumerate(plan):
        if epoch == 2:
            opt.param_groups[0]["lr"] = 0.01
        outs.append(g(_batch(i, n), epoch))
        if i == 3:  # a replay: the graph's outputs are overwritten by the next one; the caller holds copies
            g.outputs[0].fill_(-1)
            g.outputs[1]["x"].fill_(-1)
    assert g.events == ["warm", "warm", "capture", "replay", "replay",   # epoch 0 (the partial batch: no event)
                        "warm", "warm", "capture", "replay", "replay",   # epoch 1
                        "warm",                                          # epoch 2
                        "warm", "warm", "capture", "replay", "replay"]   # epochs 3 and 4
    assert (g.captures, g.replays) == (3, 6)
    # every call stepped on its own batch's values (the replays through the static copies), partial included
    assert [s[1] for s in seen] == [float(i) for i in range(len(plan))]
    assert seen[4][2] == [40, 41, 42] and seen[3][2] == [30, 31, 32, 33]
    loss, logs = outs[3]
    assert loss.item() == 3.0 * 16 and logs["x"].item() == -3.0


def test_the_graph_registers_the_methods_own_generators(monkeypatch):
    registered, captured = [], []

    class FakeGraph:
        def register_generator_state(self, gen):
            registered.append(gen)

    class FakeCapture:
        def __init__(self, graph, **kw):
            captured.append((graph, kw))

        def __enter__(self):
            pass

        def __exit__(self, *exc):
            pass
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", FakeCapture)
    method, gen = Window(), torch.Generator()
    method.generators = [gen]
    zeroed = []
    opt = SimpleNamespace(param_groups=[{"lr": 0.1}], zero_grad=lambda set_to_none: zeroed.append(set_to_none))
    g = speed.GraphedStep(lambda b, e: (b.audio.sum(), {}), method, opt, batch_size=4)
    graph = g._capture(lambda: "outputs")
    assert registered == [gen] and g.outputs == "outputs" and zeroed == [True]
    assert captured == [(graph, {"capture_error_mode": "thread_local"})]  # the reader thread may pin memory meanwhile


def _method(name, **cfg):
    from conftest import make_cfg as mk
    c = mk(f"modulation={name}", *[f"modulation.{k}={v}" for k, v in cfg.items()])
    model = __import__("avbalance.models", fromlist=["build_model"]).build_model(c.model, c.fusion, 3)
    return METHODS.get(name)(c.modulation, model, device=CPU, seed=0)


def test_which_methods_and_runs_may_be_replayed():
    on = SimpleNamespace(cuda_graph=True)
    ogm, none, mslr = _method("ogm_ge"), _method("none"), _method("mslr")
    cuda = torch.device("cuda")
    assert speed.cuda_graph_refusal(SimpleNamespace(cuda_graph=False), cuda, 1, ogm) == "off"
    assert speed.cuda_graph_refusal(on, CPU, 1, ogm) == "not on CUDA"
    assert speed.cuda_graph_refusal(on, cuda, 2, ogm).startswith("2 processes")
    assert speed.cuda_graph_refusal(on, cuda, 1, mslr) == ("modulation=mslr has per-step host work a replay would skip "
                                                           "(graph_safe = False)")
    assert speed.cuda_graph_refusal(on, cuda, 1, ogm) is None and speed.cuda_graph_refusal(on, cuda, 1, none) is None
    # torch.compile modes that record CUDA graphs of their own (and sync while recording) cannot be captured
    for mode, refused in [("default", False), ("max-autotune-no-cudagraphs", False), ("reduce-overhead", True),
                          ("max-autotune", True)]:
        why = speed.cuda_graph_refusal(SimpleNamespace(cuda_graph=True, compile=True, compile_mode=mode), cuda, 1, ogm)
        assert (why == f"speed.compile_mode={mode} makes CUDA graphs of its own; with speed.cuda_graph use "
                       "speed.compile_mode=default or max-autotune-no-cudagraphs") if refused else why is None
    assert speed.cuda_graph_refusal(SimpleNamespace(cuda_graph=True, compile=False, compile_mode="reduce-overhead"),
                                    cuda, 1, ogm) is None
    # OGM's window is host-side: two keys; GE's generator is registered only when it is a CUDA one
    w = _method("ogm_ge", start_epoch=2, end_epoch=3)
    assert [w.graph_key(e) for e in range(5)] == [False, False, True, True, False]
    assert w.graph_generators() == [] and _method("ogm").graph_generators() == []
    # on CUDA GE's own generator is registered (a stand-in with a CUDA device: no GPU here); OGM has none to register
    on_cuda = SimpleNamespace(device=torch.device("cuda"))
    ge, plain = _method("ogm_ge"), _method("ogm")
    ge.generator = plain.generator = on_cuda
    assert ge.graph_generators() == [on_cuda] and plain.graph_generators() == []
    assert Method.graph_safe is False and OGM.graph_safe is True and METHODS.get("none").graph_safe is True


def test_asked_on_the_cpu_it_is_not_used_says_so_and_changes_nothing(tmp_path, caplog):
    runs = {}
    for flag in ("false", "true"):
        with caplog.at_level(logging.INFO, logger="avbalance"):
            caplog.clear()
            runs[flag] = train(make_cfg("modulation=ogm_ge", "epochs=2", f"speed.cuda_graph={flag}"), tmp_path / flag)
        said = [r.getMessage() for r in caplog.records if "cuda_graph" in r.getMessage()]
        assert said == ([] if flag == "false" else ["speed.cuda_graph: not used: not on CUDA"])
    for r in runs.values():
        for k in TIMINGS:
            r["last"].pop(k)
    assert runs["false"] == runs["true"]


def test_the_trainer_steps_through_the_graphed_step_when_it_applies(tmp_path, monkeypatch):
    """The trainer's wiring, on the CPU: with the refusal lifted and the stand-in in place, a run
    replays most of its steps and trains to the numbers of the eager run (a replay is the step); the
    optimizer is built capturable only then."""
    import avbalance.trainer as trainer_module
    made, built = [], []
    real_opt = trainer_module.build_optimizer
    monkeypatch.setattr(trainer_module, "build_optimizer", lambda *a, **kw: built.append(kw) or real_opt(*a, **kw))

    def stand_in(*a, **kw):
        made.append(StandIn(*a, **kw))
        return made[-1]
    runs = {}
    for graphed in (False, True):
        if graphed:
            monkeypatch.setattr(speed, "cuda_graph_refusal", lambda *a: None)
            monkeypatch.setattr(speed, "GraphedStep", stand_in)
        runs[graphed] = train(make_cfg("modulation=ogm_ge", "modulation.alpha=0.8", "epochs=3", "dataset.n_train=200",
                                       "batch_size=32", "speed.cuda_graph=true"), tmp_path / str(graphed))
    (g,) = made
    assert [kw["capturable"] for kw in built] == [False, True]
    # 200 rows: 6 full batches and a partial one per epoch; OGM's window and the rate stay: one capture
    assert g.events.count("capture") == 1 and g.events.count("replay") == 3 * 6 - 3 and g.events.count("warm") == 3
    for r in runs.values():
        for k in TIMINGS:
            r["last"].pop(k)
    assert runs[False] == runs[True]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")
@pytest.mark.parametrize("modulation, optim", [("ogm_ge", "sgd"), ("none", "adam")])  # Adam: built capturable
def test_on_cuda_a_graphed_run_trains_as_the_eager_run(tmp_path, monkeypatch, modulation, optim):
    made = []
    real = speed.GraphedStep
    monkeypatch.setattr(speed, "GraphedStep", lambda *a, **kw: made.append(real(*a, **kw)) or made[-1])
    runs = {}
    for flag in ("false", "true"):
        alpha = ["modulation.alpha=0.8"] if modulation != "none" else []
        runs[flag] = train(make_cfg(f"modulation={modulation}", *alpha, f"optim={optim}", "epochs=3", "dataset.n_train=200",
                                    "batch_size=32",
                                    "device=cuda", "speed.cudnn_benchmark=false", f"speed.cuda_graph={flag}"),
                           tmp_path / flag)
    (g,) = made
    assert g.captures == 1 and g.replays == 3 * 6 - 3
    a, b = runs["false"]["last"], runs["true"]["last"]
    assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-3)
    assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-3)


class _Stop(Exception):
    pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")
@pytest.mark.parametrize("modulation, optim", [("ogm_ge", "sgd"), ("none", "adam")])
def test_on_cuda_an_eager_run_resumes_into_a_graphed_one(tmp_path, monkeypatch, modulation, optim):
    """The checkpoint is loaded onto the GPU: the RNG states (CPU byte tensors for torch) must come back
    to the CPU, and the resumed Adam must be capturable although the saving run's was not."""
    made = []
    real = speed.GraphedStep
    monkeypatch.setattr(speed, "GraphedStep", lambda *a, **kw: made.append(real(*a, **kw)) or made[-1])

    def stop_after_0(epoch, row):
        if epoch == 0:
            raise _Stop
    base = [f"modulation={modulation}", f"optim={optim}", "epochs=3", "dataset.n_train=200", "batch_size=32", "device=cuda"]
    with pytest.raises(_Stop):
        train(make_cfg(*base), tmp_path / "run", callbacks=[stop_after_0])
    summary = train(make_cfg(*base, "resume=true", "speed.cuda_graph=true"), tmp_path / "run")
    (g,) = made
    assert g.captures == 1 and g.replays == 2 * 6 - 3  # epochs 1 and 2, graphed
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and 0 <= summary["test/acc"] <= 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_on_the_second_gpu_the_graph_captures_that_gpus_step(tmp_path):
    """device=cuda:1 in one process: streams and the capture must be on GPU 1 (the current device)."""
    runs = {flag: train(make_cfg("modulation=ogm_ge", "epochs=2", "dataset.n_train=200", "batch_size=32", "device=cuda:1",
                                 "speed.cudnn_benchmark=false", f"speed.cuda_graph={flag}"), tmp_path / flag)
            for flag in ("false", "true")}
    assert runs["false"]["last"]["train/loss"] == pytest.approx(runs["true"]["last"]["train/loss"], rel=1e-3)


# --- a CPU emulation of what a replay does: the step's operators again, none of its Python ------------
class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def _replay_ops(ops, outputs):
    """Run the recorded operators again on the same inputs: tensors made during the recording are
    replaced by this run's, every other tensor (parameters, buffers, the static batch, optimizer state,
    the generator) is the same object, as memory is the same in a CUDA graph. Python is not run."""
    now = {}

    def sub(x):
        if isinstance(x, torch.Tensor):
            return now.get(id(x), x)
        if isinstance(x, (list, tuple)):
            return type(x)(sub(y) for y in x)
        if isinstance(x, dict):
            return {k: sub(v) for k, v in x.items()}
        return x

    def bind(old, new):
        if isinstance(old, torch.Tensor):
            now[id(old)] = new
        elif isinstance(old, (list, tuple)):
            for o, n in zip(old, new):
                bind(o, n)
    with torch.no_grad():
        for func, args, kwargs, out in ops:
            bind(out, func(*sub(args), **sub(kwargs)))
    return sub(outputs)


class OpReplay(speed.GraphedStep):
    """GraphedStep with capture = recording the step's operators (which also runs it once, on the batch
    being captured: the first replay is then that run) and replay = running those operators again."""

    def _eager_warmup(self, batch, epoch):
        return self.step(batch, epoch)

    def _capture(self, fn):
        rec = _Recorder()
        with rec:
            self.captured = self.outputs = fn()
        self.ops, self.ran = rec.ops, True
        return "graph"

    def _replay(self, graph):
        if self.ran:  # the recording ran this batch's step
            self.ran = False
            return
        self.outputs = _replay_ops(self.ops, self.captured)


def _train_with(step_class, monkeypatch, tmp_path, *overrides):
    made = []
    with monkeypatch.context() as m:
        if step_class is not None:
            m.setattr(speed, "cuda_graph_refusal", lambda *a: None)
            m.setattr(speed, "GraphedStep", lambda *a, **kw: made.append(step_class(*a, **kw)) or made[-1])
        summary = train(make_cfg("epochs=3", "dataset.n_train=200", "batch_size=32", "speed.cuda_graph=true", *overrides),
                        tmp_path)
    for k in TIMINGS:
        summary["last"].pop(k)
    return summary, made


@pytest.mark.parametrize("overrides, captures, replays", [
    (("modulation=ogm_ge", "modulation.alpha=0.8"), 1, 3 + 6 + 6),                            # one key for 3 epochs
    (("modulation=ogm", "modulation.start_epoch=1", "modulation.end_epoch=1"), 3, 3 * 3),     # the window: a key per epoch
    (("modulation=none", "optim.step_size=1"), 3, 3 * 3)])                                    # a new rate per epoch
def test_replaying_the_steps_operators_trains_as_the_eager_step(tmp_path, monkeypatch, overrides, captures, replays):
    """What `graph_safe` claims, checked on the CPU: the step's operators run again without its Python
    (as a CUDA graph replay runs its kernels) give, over three epochs, exactly the eager run's numbers:
    no per-step Python state, GE's noise drawn anew from its generator, OGM's window and a new learning
    rate each captured anew."""
    eager, _ = _train_with(None, monkeypatch, tmp_path / "eager", *overrides)
    replayed, (g,) = _train_with(OpReplay, monkeypatch, tmp_path / "replayed", *overrides)
    assert (g.captures, g.replays) == (captures, replays)  # 6 full batches an epoch: 3 warm-up, then capture and replays
    assert replayed == eager


class _CountingMethod(Method):
    """Not replayable on purpose: its gradient scale lives in a Python counter."""
    graph_safe = True

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = 0

    def after_backward(self, model, out, batch, epoch):
        self.calls += 1
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(1.0 / self.calls)
        return super().after_backward(model, out, batch, epoch)


def test_the_emulation_catches_a_step_with_python_state(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS._entries, "none", _CountingMethod)
    eager, _ = _train_with(None, monkeypatch, tmp_path / "eager", "modulation=none")
    replayed, (g,) = _train_with(OpReplay, monkeypatch, tmp_path / "replayed", "modulation=none")
    assert g.replays >= 10 and replayed["last"]["train/loss"] != eager["last"]["train/loss"]


@pytest.mark.parametrize("name", [n for n in METHODS.names() if METHODS.get(n).graph_safe])
def test_every_method_that_says_graph_safe_replays_as_it_steps(tmp_path, monkeypatch, name):
    eager, _ = _train_with(None, monkeypatch, tmp_path / "eager", f"modulation={name}")
    replayed, (g,) = _train_with(OpReplay, monkeypatch, tmp_path / "replayed", f"modulation={name}")
    assert g.replays > 0 and replayed == eager
