"""The real split lists (bundled in data_prep/splits) through the parsers and split rules."""
from collections import Counter

import numpy as np

from data_prep import ave, cremad, kinetics_sounds
from data_prep.common import BUNDLED_SPLITS as SPLITS, stratified_holdout


def test_cremad_reference_lists_and_fair_val():
    lists = {s: cremad.read_split_list(SPLITS / "cremad" / f"{s}.csv") for s in ("train", "test")}
    assert (len(lists["train"]), len(lists["test"])) == (6698, 744)
    assert Counter(e for _, e in lists["train"])["ANG"] == 1166 and Counter(e for _, e in lists["test"])["SAD"] == 140
    rows = cremad.reference_splits(lists, 0.1, seed=0)
    val_actors = {cremad.actor(c) for c, _ in rows["val"]}
    assert len(val_actors) == 9                                         # 10% of 91 actors
    assert not val_actors & {cremad.actor(c) for c, _ in rows["train"]}
    assert len(rows["train"]) + len(rows["val"]) == 6698 and rows["test"] == lists["test"]
    assert val_actors == {cremad.actor(c) for c, _ in cremad.reference_splits(lists, 0.1, seed=0)["val"]}


def test_cremad_speaker_independent():
    pool = [r for s in ("train", "test") for r in cremad.read_split_list(SPLITS / "cremad" / f"{s}.csv")]
    rows = cremad.speaker_independent_splits(pool, 0.1, 0.2, seed=0)
    actors = {s: {cremad.actor(c) for c, _ in r} for s, r in rows.items()}
    assert [len(actors[s]) for s in ("train", "val", "test")] == [64, 9, 18]
    assert sum(len(r) for r in rows.values()) == 7442


def test_kinetics_sounds_reference_lists():
    fmt, train = kinetics_sounds.read_ks_list(SPLITS / "kinetics_sounds" / "my_train.txt")
    _, test = kinetics_sounds.read_ks_list(SPLITS / "kinetics_sounds" / "my_test.txt")
    assert fmt == "reference" and (len(train), len(test)) == (14799, 2597)
    counts = Counter(c for _, c in train)
    assert len(counts) == 31 and min(counts.values()) == 197 and max(counts.values()) == 690
    held = stratified_holdout([kinetics_sounds.KS_CLASSES.index(c) for _, c in train], 0.1, seed=0)
    assert held.sum() == 1480
    assert (np.bincount(np.asarray([kinetics_sounds.KS_CLASSES.index(c) for _, c in train])[held]) >= 19).all()


def test_ave_lists():
    rows = {s: ave.read_ave_list(SPLITS / "ave" / name) for s, name in ave.LISTS.items()}
    assert [len(rows[s]) for s in ("train", "val", "test")] == [3339, 402, 402]
    assert len(ave.read_ave_list(SPLITS / "ave" / "Annotations.txt")) == 4143      # header skipped
    classes = sorted({c for r in rows.values() for _, c in r})
    assert len(classes) == 28
    assert sorted(classes) == sorted((SPLITS / "ave" / "categories.txt").read_text().splitlines())
    grouped = ave.group_by_video(rows["train"])
    assert sum(len(c) > 1 for c in grouped.values()) == 27                          # ambiguous, skipped
    assert len(grouped) == 3339 - 27
