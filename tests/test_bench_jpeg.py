"""scripts/bench_jpeg.py runs end to end at a tiny size and writes its section of the report; the
threaded decoding it times gives the single thread's frames."""
import numpy as np

import bench_jpeg as bench  # scripts/ is on pytest's path (pyproject.toml)


def test_bench_jpeg_tiny(tmp_path):
    out = tmp_path / "benchmarks.md"
    # bench_data's section first: the shared writer once replaced it with this script's figures
    out.write_text("# Benchmarks\n\n## Data loading (scripts/bench_data.py)\n\nloading kept\n\n## Training\n\nkept\n")
    args = ["--clips", "6", "--frames", "2", "--threads", "1", "2", "--batch-size", "4", "--reps", "1", "--out", str(out)]
    res = bench.main(args)
    assert set(res) == {1, 2} and all(v > 0 for v in res.values())
    bench.main(args)
    text = out.read_text()
    assert "## Data loading (scripts/bench_data.py)\n\nloading kept" in text and "## Training\n\nkept" in text
    assert text.count(bench.SECTION) == 1 and "| 2 |" in text  # replaced on the second run, not appended


def test_threaded_decoding_gives_the_same_frames(tmp_path):
    arrays = bench.make_store(tmp_path, 10, 3, side=32)
    rows, pos = np.arange(10), np.tile([2, 0, 1], (10, 1))
    arrays.decode_threads = 1
    one = arrays.read_frames(rows, pos)
    arrays.decode_threads = 4
    assert one.shape == (10, 3, 32, 32, 3) and np.array_equal(arrays.read_frames(rows, pos), one)
