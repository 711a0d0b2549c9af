"""The worker side of a preparation: one clip to (frames, spectrogram) in a worker process, and the
Runner, a process pool that isolates clips whose decoder crashes its worker."""
from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

import cv2
import numpy as np

from data_prep.decode import ClipError, FrameSpec, NoAudioTrack, load_wave, read_visual
from data_prep.recipes import FeatureRecipe
from data_prep.store import UserError

if TYPE_CHECKING:
    from data_prep.common import Clip


# ----------------------------------------------------------------------------- one clip (runs in a worker)

def clip_audio(clip: Clip, recipe) -> np.ndarray:
    if isinstance(recipe, FeatureRecipe):
        return recipe(np.load(clip.audio, allow_pickle=False))
    # The reference chains two resamplers for some datasets (ffmpeg to a 16 kHz wav, then
    # librosa.load at 22.05 kHz): load at load_sr first, then bring to sr.
    first_sr = recipe.load_sr or recipe.sr
    src = clip.audio or clip.visual
    try:
        y = load_wave(src, first_sr)
    except NoAudioTrack:
        if not (clip.audio_fallback and os.path.exists(clip.audio_fallback)):
            raise ClipError(f"no audio track in {src} and no {clip.audio_fallback or 'wav in --audio-dir'}") from None
        y = load_wave(clip.audio_fallback, first_sr)
    if first_sr != recipe.sr:
        import librosa
        y = librosa.resample(y, orig_sr=first_sr, target_sr=recipe.sr, res_type="soxr_hq")
    return recipe(y)


def prepare_clip(clip: Clip, recipe, frames: FrameSpec) -> tuple[np.ndarray, np.ndarray]:
    if clip.visual is None:
        raise ClipError("no visual input")
    return read_visual(clip.visual, frames), clip_audio(clip, recipe)


# Worker state is set once per process (initializer) instead of being pickled with every clip.
_WORK: dict = {}


def _init_worker(recipe, frames: FrameSpec) -> None:
    cv2.setNumThreads(1)          # the pool is the parallelism
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _WORK.update(recipe=recipe, frames=frames)


def _work(job: tuple[int, Clip]):
    """Returns (i, (frames, audio)) or (i, reason): a bad clip never stops the run."""
    i, clip = job
    try:
        return i, prepare_clip(clip, _WORK["recipe"], _WORK["frames"])
    except Exception as e:   # corrupt media raises all kinds of errors (cv2, av, soundfile, ValueError)
        reason = str(e) if isinstance(e, ClipError) else f"{type(e).__name__}: {e}"
        return i, " ".join(reason.split()) or type(e).__name__


# ----------------------------------------------------------------------------- the runner

class Runner:
    """A process pool shared by all splits of a run. workers=0 runs clips in this process."""

    def __init__(self, recipe, frames: FrameSpec, workers: int):
        self.recipe, self.frames, self.workers = recipe, frames, workers
        self._pool = None

    @staticmethod
    def _context():
        """Workers come from a fork server, never from a plain fork of this process: a fork of a
        process whose OpenCV or OpenMP thread pools are running can deadlock in the child (seen
        here: cv2.setNumThreads hung after an earlier cv2/torch call in the same process). The
        server imports the heavy modules once (librosa, scipy.signal, cv2) and forks clean workers."""
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["data_prep.common", "librosa.core.audio", "scipy.signal"])
        return ctx

    def _new_pool(self, n: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(n, mp_context=self._context(), initializer=_init_worker,
                                   initargs=(self.recipe, self.frames))

    def results(self, jobs: list):
        """Yield (i, (frames, audio) or reason) for every job, in completion order. A worker that
        dies (a decoder segfault, the OOM killer) breaks the pool: the clips in flight are then
        retried one per fresh process, so the culprit is found and skipped, and the rest go on."""
        if self.workers <= 0:
            _init_worker(self.recipe, self.frames)
            yield from map(_work, jobs)
            return
        pending = deque(jobs)
        while pending:
            if self._pool is None:
                self._pool = self._new_pool(self.workers)
            try:
                yield from self._drain(self._pool, pending, window=4 * self.workers)  # bounded: results are big
            except _Broken as broken:    # `pending` still holds the clips not submitted yet
                self.close()
                self._check_workers_start()
                for job in broken.jobs:
                    with self._new_pool(1) as alone:
                        try:
                            yield from self._drain(alone, deque([job]), window=1)
                        except _Broken:
                            yield job[0], "the decoder crashed its worker process on this clip"

    def _check_workers_start(self) -> None:
        """A broken pool is blamed on a clip only if a fresh worker can run a trivial job; else no
        worker can start at all (e.g. a calling script without an `if __name__ == "__main__":` guard,
        which the fork server must re-import) and every clip would be skipped for nothing."""
        try:
            with self._new_pool(1) as probe:
                probe.submit(int).result()
        except BrokenProcessPool:
            raise UserError("preparation worker processes cannot start; if you call data_prep from your own "
                            "script, put the call under `if __name__ == \"__main__\":` (or use --workers 0)") from None

    @staticmethod
    def _drain(pool, queue: deque, window: int):
        inflight: dict = {}
        while queue or inflight:
            while queue and len(inflight) < window:
                job = queue.popleft()
                inflight[pool.submit(_work, job)] = job
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for fut in done:
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    raise _Broken(list(inflight.values())) from None
                del inflight[fut]
                yield res

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class _Broken(Exception):
    def __init__(self, jobs):
        self.jobs = jobs   # the clips in flight when the pool broke
