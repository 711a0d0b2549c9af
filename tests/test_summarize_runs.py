"""scripts/summarize_runs.py: groups by config except the seed, skips and counts failed and unfinished
runs, mean ± sample std computed here, no spread for one run."""
import json
import statistics

import yaml

from summarize_runs import main, summarize


def run(root, name, alpha, seed, acc=None, status="ok"):
    d = root / name
    d.mkdir(parents=True)
    (d / "config_resolved.yaml").write_text(yaml.safe_dump(
        {"seed": seed, "device": "cpu", "dataset": {"name": "toy", "root": f"/x/{seed}"}, "modulation": {"name": "ogm_ge", "alpha": alpha}}))
    if status == "unfinished":
        return
    s = {"status": status, "seed": seed, "dataset": "toy", "choices": {"modulation": "ogm_ge"}}
    if status == "ok":
        s.update({"test/acc": acc, "test/acc_audio": acc / 2, "test/acc_visual": acc / 4})
    (d / "summary.json").write_text(json.dumps(s))


def test_groups_means_and_skips(tmp_path, capsys):
    run(tmp_path, "0", 0.1, 0, 0.50)
    run(tmp_path, "1", 0.1, 1, 0.60)
    run(tmp_path, "2", 0.1, 2, 0.90)
    run(tmp_path, "3", 0.8, 0, 0.70)
    run(tmp_path, "4", 0.8, 1, status="failed")
    run(tmp_path, "5", 0.8, 2, status="unfinished")
    rows, skipped = summarize(tmp_path)
    by_alpha = {r["config"]["modulation.alpha"]: r for r in rows}
    assert set(by_alpha) == {0.1, 0.8} and by_alpha[0.1]["seeds"] == [0, 1, 2] and by_alpha[0.8]["n"] == 1
    mean, std = by_alpha[0.1]["test/acc"]
    assert mean == statistics.mean([0.5, 0.6, 0.9]) and std == statistics.stdev([0.5, 0.6, 0.9])
    assert by_alpha[0.8]["test/acc"] == (0.7, None)
    assert [p.name for p in skipped["failed"]] == ["4"] and [p.name for p in skipped["unfinished"]] == ["5"]

    assert main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "skipped 1 failed run(s): 4" in err and "skipped 1 unfinished run(s): 5" in err
    lines = out.splitlines()
    assert lines[0] == "| modulation.alpha | n | test acc | test acc_audio | test acc_visual |"
    assert f"| 0.1 | 3 | {mean:.4f} ± {std:.4f} |" in lines[2]
    assert lines[3] == "| 0.8 | 1 | 0.7000 | 0.3500 | 0.1750 |"  # one run: no ± 0.0000


def test_nothing_finished_is_an_error(tmp_path, capsys):
    run(tmp_path, "0", 0.1, 0, status="failed")
    assert main([str(tmp_path)]) == 2
    assert "no finished run" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
