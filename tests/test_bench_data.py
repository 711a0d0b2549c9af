"""scripts/bench_data.py runs end to end at a tiny size and writes its section of the report."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_data_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_data", REPO / "scripts" / "bench_data.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n## Training\n\nkept\n")
    res = bench.main(["--clips", "6", "--batch-size", "4", "--workers", "1", "--no-prep-module", "--out", str(out)])
    assert res["reference"] > 0 and all(v > 0 for k, v in res.items() if k.startswith("prepared"))
    text = out.read_text()
    assert "## Training\n\nkept" in text and text.count(bench.SECTION) == 1 and "samples/s" in text
    bench.main(["--clips", "4", "--batch-size", "4", "--workers", "1", "--no-prep-module", "--out", str(out)])
    assert out.read_text().count(bench.SECTION) == 1  # replaced, not appended
