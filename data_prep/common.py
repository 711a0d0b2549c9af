"""The preparation driver shared by every dataset module: split-list helpers, and `prepare`, which
runs every split through the Runner (runner.py) into a SplitWriter (store.py), resumes where a
previous run stopped, and writes the manifest last.

A dataset module only turns its raw layout into {split: [Clip, ...]} plus class names, then calls
`prepare(...)`. Decoding (decode.py) and spectrograms (recipes.py) are the same for every dataset.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from data_prep.decode import FrameSpec
from data_prep.recipes import recipe_params
from data_prep.runner import Runner
from data_prep.store import SplitWriter, UserError, write_manifest

BUNDLED_SPLITS = Path(__file__).resolve().parent / "splits"   # the reference lists (splits/README.md)

# ----------------------------------------------------------------------------- split lists

def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines. utf-8-sig drops a BOM if present; splitlines handles CRLF."""
    return [ln.strip() for ln in Path(path).read_text(encoding="utf-8-sig").splitlines() if ln.strip()]


def require(path: Path, what: str, hint: str = "") -> Path:
    """The one-line error for a missing raw folder or list file: what was expected, where."""
    if not Path(path).exists():
        raise UserError(f"{what} not found: expected {path}" + (f" ({hint})" if hint else ""))
    return Path(path)


def index_files(root: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    """stem -> path for every file with one of `exts` below root (flat or one folder per class)."""
    found: dict[str, Path] = {}
    for dirpath, _, files in os.walk(root, followlinks=True):
        for f in sorted(files):
            stem, ext = os.path.splitext(f)
            if ext.lower() in exts:
                found.setdefault(stem, Path(dirpath) / f)
    return found


def holdout_names(names, fraction: float, seed: int) -> list[str]:
    """A seeded random `fraction` of `names` (at least one). Sorting first makes the choice depend
    only on the set of names and the seed, not on the order they were listed in."""
    names = sorted(set(names))
    k = max(1, round(fraction * len(names))) if fraction > 0 else 0
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(names, size=k, replace=False).tolist())


def stratified_holdout(labels: list[int], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of round(fraction * N) rows, shared out over the classes in proportion to
    their size (largest remainder), so val keeps the class balance of train even when classes are
    small. Depends only on the label sequence and the seed."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    quota = fraction * sizes
    take = np.floor(quota).astype(int)
    rest = round(fraction * len(labels)) - take.sum()
    tiebreak = rng.random(len(classes))          # seeded order among equal remainders
    for c in np.lexsort((tiebreak, -(quota - take)))[:max(0, rest)]:
        take[c] += 1
    mask = np.zeros(len(labels), dtype=bool)
    for c, k in zip(classes, take, strict=True):
        rows = np.flatnonzero(labels == c)
        mask[rng.permutation(rows)[:k]] = True
    return mask


def hold_out_val(rows: list, labels: list[int], fraction: float, seed: int) -> tuple[list, list]:
    """(train, val): a seeded, class-stratified `fraction` of rows moves to val, order kept."""
    held = stratified_holdout(labels, fraction, seed)
    return [r for r, h in zip(rows, held, strict=True) if not h], [r for r, h in zip(rows, held, strict=True) if h]


def find_lists(given: Path | None, raw: Path, dataset: str, names: list[str], bundled: bool = True) -> Path:
    """The folder the split lists `names` are read from, printed on stderr once they are there:
    --splits DIR when given; else the raw folder when it holds them all (where a release ships its
    lists); else the lists bundled with the project, data_prep/splits/<dataset>. When no folder
    holds them, the raw folder, so that the error for the missing list names where to put it."""
    if given is not None:
        folder = Path(given)
    else:
        candidates = [raw, BUNDLED_SPLITS / dataset] if bundled else [raw]
        folder = next((d for d in candidates if all((d / n).is_file() for n in names)), raw)
    if all((folder / n).is_file() for n in names):
        where = " (bundled with the project)" if folder == BUNDLED_SPLITS / dataset else ""
        print(f"split lists: {folder}{where}", file=sys.stderr)
    return folder


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- clips

@dataclass(frozen=True)
class Clip:
    clip_id: str
    label: int
    visual: str | None                 # video file, folder of images, or .npy frames [T,H,W,3]
    audio: str | None = None           # wav/flac/mp3 or .npy features [F,T]; None = the video's own track
    audio_fallback: str | None = None  # used when the video has no audio track (--audio-dir)
    problem: str | None = None         # known before decoding (missing file...): skipped with this reason


# ----------------------------------------------------------------------------- preparing

def prepare_split(out: Path, split: str, clips: list[Clip], runner: Runner, *, jpeg: bool,
                  limit: int | None = None) -> tuple[dict | None, int]:
    """Write the clips of one split not written yet (at most `limit` of them). Returns the
    writer's summary (None when `limit` left clips to do) and the number of clips handled."""
    id_len = max([64] + [len(c.clip_id) for c in clips])
    writer = SplitWriter(out, split, len(clips), max_frames=runner.frames.max_frames, frame_hw=runner.frames.hw,
                         audio_shape=runner.recipe.shape, jpeg=jpeg, id_len=id_len)
    todo = writer.todo()
    budget = len(todo) if limit is None else max(0, limit)
    jobs = []
    for i in todo[:budget]:
        if clips[i].problem:       # missing file, ambiguous label...: no need to start a worker
            writer.skip(i, clips[i].clip_id, clips[i].problem)
        else:
            jobs.append((i, clips[i]))
    from tqdm import tqdm
    bar = tqdm(total=len(jobs), desc=f"{split:>5}", unit="clip", dynamic_ncols=True, file=sys.stderr,
               disable=None if len(jobs) > 0 else True)
    try:
        for i, res in runner.results(jobs):
            if not isinstance(res, str):
                try:
                    writer.write(i, clips[i].clip_id, clips[i].label, *res)
                except ValueError as e:     # the store's checks: NaN / float16 range / frame shape
                    res = str(e)
            if isinstance(res, str):
                writer.skip(i, clips[i].clip_id, res)
            bar.update()
    finally:
        bar.close()
        writer.flush()   # an interrupted run keeps everything finished so far
    if len(todo) > budget:
        return None, budget
    return writer.close(), len(todo)


def _versions() -> dict:
    import importlib.metadata as md
    out = {"python": sys.version.split()[0]}
    for pkg in ("numpy", "opencv-python", "av", "librosa", "soxr", "scipy", "torch", "torchaudio", "soundfile"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _param_diff(old, new, key: str = "") -> list[str]:
    """`key: old -> new` for every leaf that differs (nested dicts as dotted keys)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _param_diff(old.get(k), new.get(k), f"{key}.{k}".lstrip("."))]
    return [] if old == new else [f"{key}: {json.dumps(old)} -> {json.dumps(new)}"]


def clear_output(out: Path) -> None:
    """Delete the preparation in `out`: the manifest first (a half-deleted output never counts as
    prepared), then the split folders and params.json. Other files in `out` are left alone."""
    (out / "manifest.json").unlink(missing_ok=True)
    for d in out.iterdir() if out.is_dir() else ():
        if (d / "format.json").exists() or (d / "done.npy").exists():
            shutil.rmtree(d)
    (out / "params.json").unlink(missing_ok=True)


def start_output(out: Path, params: dict, overwrite: bool) -> None:
    """Begin or resume a preparation in `out`. A run into an existing preparation, finished or not,
    must use the parameters recorded in out/params.json, or its rows would mix with the old ones;
    `overwrite` (--overwrite) deletes the old preparation first."""
    path = out / "params.json"
    if overwrite:
        clear_output(out)
    elif path.exists():
        diff = _param_diff(json.loads(path.read_text()), params)
        if diff:
            more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
            raise UserError(f"{out} holds a preparation with other parameters ({'; '.join(diff[:3])}{more}); "
                            f"expected the same parameters: add --overwrite to replace it, or use another --out")
        return
    elif (out / "manifest.json").exists() or any(out.glob("*/format.json")):
        raise UserError(f"{out} holds a preparation without params.json (made by an older version); "
                        f"expected one with params.json: add --overwrite to replace it, or use another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(params, indent=2))


def _reason_kind(clip_id: str, reason: str) -> str:
    """A skip reason without its clip id and absolute paths, so that reasons can be counted."""
    return re.sub(r"(?<!\S)/\S+", "...", reason.replace(clip_id, "<id>"))


def empty_split_error(dataset: str, split: str, summary: dict, args) -> UserError:
    """The one line for a split that ended with no usable clip: the most common reasons, and
    the option that fixes the most common one where there is one."""
    reasons = Counter(_reason_kind(cid, why) for cid, why in summary["skipped"]).most_common()
    top = "; ".join(f"{n} x {why}" for why, n in reasons[:3])
    fix = "fix the raw data"
    if reasons[0][0].startswith("no audio track") and hasattr(args, "audio_dir"):
        fix = "give --audio-dir DIR holding a <video stem>.wav for each video without an audio track"
    elif reasons[0][0].startswith(("missing", "no video file")):
        fix = "check --raw against the layout in data_prep/README.md"
    return UserError(f"{dataset} split '{split}' has no usable clip, all {summary['n']} were skipped ({top}); "
                     f"expected at least one: {fix}, then re-run")


def prepare(args, *, dataset: str, source: dict, class_names: list[str], splits: dict[str, list[Clip]], recipe,
            frames: FrameSpec, params: dict, extra: dict | None = None) -> dict | None:
    """Prepare every split, then write the manifest (last: its presence means 'prepared')."""
    out = Path(args.out)
    if not any(splits.values()):
        raise UserError(f"no clips to prepare for {dataset}: the split lists are empty")
    params = {"dataset": dataset, "audio": recipe_params(recipe), "frames": asdict(frames) | {"hw": list(frames.hw)},
              "jpeg": bool(args.jpeg), **params}
    start_output(out, params, overwrite=args.overwrite)
    summaries = {}
    runner = Runner(recipe, frames, args.workers)
    budget = args.limit
    try:
        for split, clips in splits.items():
            summary, handled = prepare_split(out, split, clips, runner, jpeg=args.jpeg, limit=budget)
            if summary is None:
                print(f"stopped after --limit {args.limit} clips; re-run to continue", file=sys.stderr)
                return None
            if summary["n"] and not summary["written"]:
                shutil.rmtree(out / split)   # nothing worth keeping: a re-run (e.g. with --audio-dir) redoes it
                raise empty_split_error(dataset, split, summary, args)
            budget = None if budget is None else budget - handled
            summary["class_counts"] = {class_names[k]: v for k, v in summary["counts"].items()}
            summaries[split] = summary
    finally:
        runner.close()
    manifest = {
        "format_version": 1,
        "dataset": dataset,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m data_prep." + dataset, *map(shlex.quote, sys.argv[1:])]),
        "source": {k: str(v) if v is not None else None for k, v in source.items()},
        "versions": _versions(),
        "params": params,
        "num_classes": len(class_names),
        "class_names": class_names,
        "audio_shape": list(recipe.shape),
        "max_frames": frames.max_frames,
        "frame_hw": list(frames.hw),
        "jpeg": bool(args.jpeg),
        "splits": summaries,
        **(extra or {}),
    }
    write_manifest(out, manifest)
    for split, s in summaries.items():
        print(f"{split}: {s['written']} clips written, {len(s['skipped'])} skipped", file=sys.stderr)
    print(f"wrote {out / 'manifest.json'}", file=sys.stderr)
    return manifest
