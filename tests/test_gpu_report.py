"""scripts/gpu_report.py: the tables it makes from a gpu_checks.sh results folder (here made on the
CPU by the same scripts at tiny sizes), and its refusal of a folder that is not there."""
import json

import pytest

import bench_train
import gpu_report  # scripts/ is on pytest's path (pyproject.toml)


def test_tables_from_a_results_folder(tmp_path):
    tiny = ["--shape", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1"]
    bench_train.main(tiny + ["--compare", "--profile", "1", "--ge-micro", "--json", str(tmp_path / "bench.json")])
    (tmp_path / "steps.tsv").write_text("env\t0\t1.0\nbench\t0\t9.5\ngraph_memory\tskipped (CUDA only)\t0\n")
    rows = [{"epoch": 0, "samples_per_second": 1234.5, "val_samples_per_second": 5678.9},
            {"epoch": 1, "samples_per_second": 2345.6, "val_samples_per_second": 6789.0}]
    (tmp_path / "e2e_ogm_ge.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 2, "samp')  # cut
    (tmp_path / "tests_cuda.log").write_text("....\n18 passed in 60.1s\n")
    out = tmp_path / "report.md"
    text = gpu_report.main([str(tmp_path), "--out", str(out)])
    assert out.read_text() == text
    bench = json.loads((tmp_path / "bench.json").read_text())
    none, ge = bench["runs"]
    assert f"| bench | none | {none['samples_per_second']:,.0f} | {none['step_ms']:.2f} |" in text
    assert f"| bench | ogm_ge | {ge['samples_per_second']:,.0f} |" in text
    assert "ogm_ge vs none step time" in text and "| graph_memory | skipped (CUDA only) | 0 |" in text
    assert "| e2e_ogm_ge | 1,234 / 5,679 | 2,346 / 6,789 |" in text and "`18 passed in 60.1s`" in text
    assert "GE alone" in text and "| noise_buffer (current) |" in text and "### bench, ogm_ge" in text


def test_a_missing_folder_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_report.main([str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and err.endswith("nope: no such folder (expected the results folder of scripts/gpu_checks.sh)")
