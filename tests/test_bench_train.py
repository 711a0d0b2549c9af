"""scripts/bench_train.py: the figures it reports (tiny shapes on the CPU, a few steps) and that it
runs without Hydra or OmegaConf (a GPU machine may have torch and torchvision only)."""
import json
import subprocess
import sys
import warnings
from types import SimpleNamespace
from pathlib import Path

import pytest

import bench_train

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("data", ["augment", "memory"])
def test_reports_every_phase_and_the_ogm_ge_overhead(tmp_path, data):
    out = tmp_path / "bench.json"
    report = bench_train.main(["--shape", "tiny", "--device", "cpu", "--steps", "3", "--warmup", "1", "--compare",
                               "--data", data, "--ge-micro", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    env = report["environment"]
    assert env["torch"] and env["commit"] and env["device"] and "--compare" in env["command"]
    assert [r["modulation"] for r in report["runs"]] == ["none", "ogm_ge"]
    for r in report["runs"]:
        assert set(r["phases_ms"]) == set(bench_train.PHASES)
        assert all(v > 0 for v in r["phases_ms"].values()), r["phases_ms"]
        # the phases tile the step: their sum is the step time, less only the loop's own overhead
        assert 0.8 * r["step_ms"] <= sum(r["phases_ms"].values()) <= r["step_ms"]
        assert r["samples_per_second"] == pytest.approx(1000 * r["batch_size"] / r["step_ms"])
        assert r["eval_samples_per_second"] > 0 and r["peak_memory_bytes"] > 0 and r["batch_size"] == 8
    none, ge = report["runs"]
    # no modulation does nothing after backward; GE draws noise over every conv gradient
    assert none["phases_ms"]["modulation"] < ge["phases_ms"]["modulation"]
    assert report["overhead"]["step_time"] == pytest.approx(ge["step_ms"] / none["step_ms"] - 1)
    micro = report["ge_micro"]
    old, new = micro["owner_index (previous)"], micro["noise_buffer (current)"]
    # the previous form allocated three model-sized tensors a step and kept an int64 index
    assert old["bytes_allocated_per_step"] >= 12 * micro["elements"] and old["persistent_bytes"] == 8 * micro["elements"]
    assert new["bytes_allocated_per_step"] < micro["elements"] and new["persistent_bytes"] < 4 * micro["elements"]
    # the kept views: fewer operators per call than building them each call; scaling alone is the floor
    per_call = micro["flat buffer, views per call (e95ab05^)"]
    assert micro["scaling only (OGM, no GE)"]["aten_ops_per_step"] < new["aten_ops_per_step"] < per_call["aten_ops_per_step"]


def test_runs_with_hydra_omegaconf_opencv_and_tqdm_absent():
    # a finder that refuses them: an import anywhere in the script's path fails the run
    code = f"""
import sys
import importlib.machinery
class Absent:  # torch itself only asks whether tqdm exists; importing it must fail
    def create_module(self, spec):
        raise ImportError('refused: ' + spec.name)
    def exec_module(self, module):
        pass
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('hydra', 'omegaconf', 'cv2'):
            raise ImportError('refused: ' + name)
        if name.split('.')[0] == 'tqdm':
            return importlib.machinery.ModuleSpec(name, Absent())
sys.meta_path.insert(0, Refuse())
sys.path.insert(0, {str(REPO / 'scripts')!r})
import bench_train
bench_train.main(['--shape', 'tiny', '--device', 'cpu', '--steps', '1', '--warmup', '0', '--modulation', 'ogm_ge'])
bad = [m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf', 'cv2', 'tqdm')]
assert not bad, bad
print('clean')
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and "clean" in r.stdout, r.stderr[-2000:]


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        bench_train.main(["--steps", "0", "--device", "cpu"])
    with pytest.raises(SystemExit):
        bench_train.main(["--shape", "imagenet"])


def test_repeats_interleave_the_modulations_and_report_the_median_run():
    report = bench_train.main(["--shape", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "0", "--compare",
                               "--repeats", "3", "--eval-batch-size", "4", "8"])
    runs = report["all_runs"]
    assert [r["modulation"] for r in runs] == ["none", "ogm_ge"] * 3
    for m, chosen in zip(("none", "ogm_ge"), report["runs"]):
        times = sorted(r["step_ms"] for r in runs if r["modulation"] == m)
        assert chosen["modulation"] == m and chosen["step_ms"] == times[1]
    each = report["overhead"]["step_time_each_repeat"]
    assert each == pytest.approx([runs[2 * i + 1]["step_ms"] / runs[2 * i]["step_ms"] - 1 for i in range(3)])
    assert all(set(r["eval_samples_per_second_by_batch"]) == {4, 8} for r in runs)
    assert all(v > 0 for r in runs for v in r["eval_samples_per_second_by_batch"].values())


def test_packed_runs_separate_processes_and_sums_them(tmp_path):
    out = tmp_path / "packed.json"
    report = bench_train.main(["--shape", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "0", "--packed", "2",
                               "--json", str(out)])
    assert report["processes"] == 2 and len(report["per_process"]) == 2
    (row,) = report["packed"]
    each = [p["runs"][0]["samples_per_second"] for p in report["per_process"]]
    assert row["modulation"] == "ogm_ge" and row["samples_per_second_each"] == each
    assert row["samples_per_second"] == pytest.approx(sum(each)) and len(row["peak_memory_bytes_each"]) == 2
    assert json.loads(out.read_text())["packed"][0]["samples_per_second"] == pytest.approx(sum(each))


def test_a_packed_process_that_fails_stops_the_others_waiting_for_it(tmp_path, monkeypatch):
    """Process 1 fails at its start; process 0 would wait at the barrier for it (600 s): it is stopped."""
    import sys
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *"--packed-rank 1"*) exit 3;; esac\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(bench_train.sys, "executable", str(wrapper))
    with pytest.raises(SystemExit, match=r"a process failed \(exit codes \[-9, 3\]; the others were stopped\)"):
        bench_train.main(["--shape", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "0", "--packed", "2"])


def test_the_speed_flags_reach_the_model_and_optimizer(monkeypatch):
    seen = []
    real = bench_train.speed.prepare_model
    monkeypatch.setattr(bench_train.speed, "prepare_model", lambda m, cfg, d: seen.append(vars(cfg).copy()) or real(m, cfg, d))
    bench_train.main(["--shape", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0", "--no-channels-last",
                      "--no-fused-optimizer"])
    assert seen and seen[0] == {"channels_last": False, "cudnn_benchmark": True, "fused_optimizer": False, "compile": False,
                                "compile_mode": "default"}


def test_make_bench_store_writes_a_prepared_dataset_of_cremad_shapes(tmp_path):
    import numpy as np
    import make_bench_store
    root = make_bench_store.main(["--out", str(tmp_path / "s"), "--scale", "0.002"])
    sizes = {s: max(1, round(n * 0.002)) for s, n in make_bench_store.SPLITS.items()}
    for split, n in sizes.items():
        frames = np.load(root / split / "frames.npy", mmap_mode="r")
        audio = np.load(root / split / "audio.npy", mmap_mode="r")
        assert frames.shape == (n, 1, 256, 256, 3) and audio.shape == (n, 257, 188) and audio.dtype == np.float16
        assert np.load(root / split / "done.npy").all()
        assert set(np.load(root / split / "labels.npy").tolist()) <= set(range(6))
    assert json.loads((root / "manifest.json").read_text())["class_names"] == [f"class{c}" for c in range(6)]
    with pytest.raises(SystemExit):
        make_bench_store.main(["--out", str(tmp_path / "t"), "--frames", "0"])


def test_the_segment_std_candidate_draws_the_current_noise_with_sigma_to_rounding():
    import torch
    from avbalance.methods.ogm import modulate_
    g = torch.Generator().manual_seed(4)
    grads = [torch.randn(16, 8, 3, 3, generator=g) * 3 + 0.5, torch.zeros(5, 2), torch.tensor([3.0]),
             torch.randn(64, generator=g) * 0.01]
    numel = torch.tensor([x.numel() for x in grads], dtype=torch.float32)
    seg = (torch.tensor([0] + [x.numel() for x in grads]).cumsum(0), 1 / numel,
           torch.where(numel > 1, 1 / (numel - 1).clamp(min=1), torch.zeros(())))
    a, b = [x.clone() for x in grads], [x.clone() for x in grads]
    k = torch.tensor(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # std() of the one-element tensor
        modulate_(a, k, torch.Generator().manual_seed(9), torch.empty(2000))
    bench_train.segment_std_modulate_(b, k, torch.Generator().manual_seed(9), torch.empty(2000), *seg)
    for x, y, g0 in zip(a, b, grads):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-7)
        assert not torch.equal(y, k * g0) or g0.numel() == 1  # noise was added (the one-element tensor: 1e-8)


def test_profile_counts_the_host_work_of_each_step(tmp_path):
    report = bench_train.main(["--shape", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--compare",
                               "--profile", "2"])
    none, ge = (r["profile"] for r in report["runs"])
    for p in (none, ge):
        assert p["steps"] == 2 and p["wall_ms_per_step"] > 0 and p["device_busy_ms_per_step"] is None  # no GPU
        assert p["kernels_per_step"] == 0 and p["top"] and all(t["ms_per_step"] > 0 for t in p["top"])
        assert any(t["name"] == "aten::conv2d" for t in p["top"])
    # GE's std, noise and foreach passes are operators the baseline does not dispatch
    assert ge["aten_ops_per_step"] > none["aten_ops_per_step"] + 20
    assert any(t["name"] == "aten::std" for t in ge["top"]) and not any(t["name"] == "aten::std" for t in none["top"])


@pytest.mark.parametrize("flag", ["--cuda-graph", "--parallel-encoders"])
def test_cuda_only_flags_are_refused_off_cuda(capsys, flag):
    with pytest.raises(SystemExit) as e:
        bench_train.main(["--shape", "tiny", "--device", "cpu", flag])
    assert e.value.code == 2 and f"{flag} needs a CUDA device, got --device cpu" in capsys.readouterr().err


def test_the_cuda_graph_run_goes_through_the_graphed_step(monkeypatch):
    """--cuda-graph's plumbing on the CPU, with the stand-in for the CUDA parts of tests/test_cuda_graph.py:
    warm-up, one capture, then a replay per timed step, timed as data + the graph."""
    from avbalance import speed
    from test_cuda_graph import StandIn
    made = []
    monkeypatch.setattr(speed, "GraphedStep", lambda *a, **kw: made.append(StandIn(*a, **kw)) or made[-1])
    args = bench_train.parser().parse_args(["--shape", "tiny", "--device", "cpu", "--steps", "4", "--warmup", "2",
                                            "--cuda-graph"])
    r = bench_train.run(args, "ogm_ge")
    (g,) = made
    assert g.events == ["warm"] * 3 + ["capture"] + ["replay"] * (2 + 4)  # warm-up calls, then the 4 timed steps
    assert r["phases_ms"]["forward"] > 0 and r["phases_ms"]["backward"] < r["phases_ms"]["forward"]
    assert r["samples_per_second"] > 0


def _params_after_steps(modulation: str, graph: bool, parallel: bool = False, steps: int = 8):
    """The tiny model's parameters after `steps` CUDA steps on three cycled batches (same weights and
    batches every call): eager, or through speed.GraphedStep; encoders in turn or on two streams."""
    import torch
    from avbalance import speed
    device, shape = torch.device("cuda"), bench_train.SHAPES["tiny"]
    sp = bench_train.speed_cfg(SimpleNamespace(channels_last=True, cudnn_benchmark=False, fused_optimizer=True,
                                               compile=False, compile_mode="default"))
    batches = bench_train.make_data(shape, device, "memory", n=3)
    model, method, opt = bench_train.build(shape, "concat", modulation, device, sp)
    encode = bench_train.ParallelEncode(model, parallel)
    body = lambda b, e: bench_train.train_body(model, method, opt, b, False, encode)  # noqa: E731
    step = speed.GraphedStep(body, method, opt, shape["batch"]) if graph else body
    for i in range(steps):
        step(batches[i % 3], 0)
    torch.cuda.synchronize()
    if graph:
        assert (step.captures, step.replays) == (1, steps - step.warmup)
    return [p.detach().clone() for p in model.parameters()]


def _same(a, b) -> bool:
    import torch
    return all(torch.allclose(x, y, rtol=1e-4, atol=1e-6) for x, y in zip(a, b))


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA (no GPU on this machine)")
@pytest.mark.parametrize("modulation", ["ogm", "ogm_ge"])
def test_a_captured_step_trains_as_the_eager_step(modulation):
    """speed.GraphedStep's replays against the eager step, from the same weights and batches: the same
    parameters after a few steps (OGM's coefficients and GE's noise, from its registered generator)."""
    assert _same(_params_after_steps(modulation, graph=False), _params_after_steps(modulation, graph=True))


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA (no GPU on this machine)")
@pytest.mark.parametrize("graph", [False, True])
def test_encoders_on_two_streams_train_as_on_one(graph):
    """--parallel-encoders: the same parameters after a few steps as the encoders run one after the other
    (eager, and replayed from a graph that forks and joins the two streams)."""
    assert _same(_params_after_steps("ogm_ge", graph), _params_after_steps("ogm_ge", graph, parallel=True))
