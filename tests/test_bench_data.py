"""scripts/bench_data.py runs end to end at a tiny size and writes its section of the report."""
import subprocess

import pytest

import bench_data as bench  # scripts/ is on pytest's path (pyproject.toml)


def test_bench_data_tiny(tmp_path):
    out = tmp_path / "benchmarks.md"
    out.write_text(f"# Benchmarks\n\n## Training\n\nkept\n\n{bench.SECTION}\n\nold figures\n\n"
                   "## JPEG decoding threads (scripts/bench_jpeg.py)\n\njpeg kept\n")
    res = bench.main(["--clips", "6", "--batch-size", "4", "--workers", "1", "--no-prep-module", "--out", str(out)])
    assert res["reference"] > 0 and all(v > 0 for k, v in res.items() if k.startswith("prepared"))
    text = out.read_text()
    assert "## Training\n\nkept" in text and text.count(bench.SECTION) == 1 and "samples/s" in text
    thread = res["prepared, train_batches on CPU (augmentation on CPU), num_workers=0"]
    procs = res["prepared, train_batches on CPU (augmentation on CPU), num_workers=1"]
    first, later, fresh = res["pass_start_ms"]
    assert min(first, later, fresh) > 0 and f"later passes {later:.0f} ms" in text
    assert f"was {'faster' if thread > procs else 'slower'} than 1 worker process ({thread:.0f} vs {procs:.0f}" in text
    bench.main(["--clips", "4", "--batch-size", "4", "--workers", "1", "--no-prep-module", "--out", str(out)])
    text = out.read_text()
    assert text.count(bench.SECTION) == 1 and "## Training\n\nkept" in text and "old figures" not in text
    assert text.endswith("## JPEG decoding threads (scripts/bench_jpeg.py)\n\njpeg kept\n")  # the next section kept


def test_write_section_refuses_text_without_a_heading(tmp_path):
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n## A\n\nkept\n")
    with pytest.raises(ValueError, match="'## ' heading"):
        bench.write_section(out, "figures without a heading\n")
    assert out.read_text() == "# Benchmarks\n\n## A\n\nkept\n"


def test_commit_is_dirty_for_code_not_for_results(tmp_path):
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "benchmarks.md").write_text("# Benchmarks\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    sha = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "results" / "benchmarks.md").write_text("# Benchmarks\n\n## A section written by a bench\n")
    assert bench.commit(tmp_path) == sha  # a bench's own output does not make the measured code dirty
    (tmp_path / "code.py").write_text("x = 2\n")
    assert bench.commit(tmp_path) == f"{sha} (dirty)"
