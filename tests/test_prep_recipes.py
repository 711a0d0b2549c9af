"""data_prep recipes, decoding and split helpers: spectrogram recipes against the reference code.

Parity tolerances: recipes are compared in float32 against the reference computation with
atol 1e-4 (same libraries underneath); stored arrays are float16, compared elsewhere with atol 1e-2
(half a float16 step at |x| = 16, the log floor log(1e-7)).
"""
import numpy as np
import pytest

librosa = pytest.importorskip("librosa")
from scipy import signal  # noqa: E402

from data_prep import synth  # noqa: E402
from data_prep.common import Clip, holdout_names, stratified_holdout  # noqa: E402
from data_prep.decode import (FrameSpec, even_subset, load_wave, read_video_frames, tile_to,  # noqa: E402
                              wanted_frame_indices)
from data_prep.recipes import RECIPES, FeatureRecipe  # noqa: E402
from data_prep.runner import clip_audio  # noqa: E402


@pytest.fixture(scope="module")
def wav16k(tmp_path_factory):
    path = tmp_path_factory.mktemp("wav") / "a.wav"
    return synth.write_wav(path, synth.tone(2.3, 16000, 440, seed=1), 16000)


def reference_cremad(path):
    """dataset/CramedDataset.py, with pad_mode='reflect' (the librosa default when it was written)."""
    samples, rate = librosa.load(path, sr=22050)
    resamples = np.tile(samples, 3)[:22050 * 3]
    resamples[resamples > 1.] = 1.
    resamples[resamples < -1.] = -1.
    spectrogram = librosa.stft(resamples, n_fft=512, hop_length=353, pad_mode="reflect")
    return np.log(np.abs(spectrogram) + 1e-7)


def reference_ks_ave(path):
    """pre-processing/obtain_audio_spectrogram.py (deleted 2022), on the 16 kHz wav it was given."""
    samples, samplerate = librosa.load(path)
    resamples = np.tile(samples, 10)[:160000]
    resamples[resamples > 1.] = 1.
    resamples[resamples < -1.] = -1.
    frequencies, times, spectrogram = signal.spectrogram(resamples, samplerate, nperseg=512, noverlap=353)
    spectrogram = np.log(spectrogram + 1e-7)
    return np.divide(spectrogram - np.mean(spectrogram), np.std(spectrogram) + 1e-9)


def reference_vggsound(path, start):
    """dataset/VGGSoundDataset.py with the random start fixed."""
    sample, rate = librosa.load(path, sr=16000, mono=True)
    while len(sample) / rate < 10.:
        sample = np.tile(sample, 2)
    new_sample = sample[start:start + rate * 5]
    new_sample[new_sample > 1.] = 1.
    new_sample[new_sample < -1.] = -1.
    spectrogram = librosa.stft(new_sample, n_fft=256, hop_length=128, pad_mode="reflect")
    return np.log(np.abs(spectrogram) + 1e-7)


def clip_of(path):
    return Clip("x", 0, visual=None, audio=str(path))


def test_load_wave_equals_librosa_load(wav16k):
    ours = load_wave(str(wav16k), 22050)
    ref, _ = librosa.load(wav16k, sr=22050)
    assert ours.dtype == np.float32 and np.array_equal(ours, ref)


def test_cremad_recipe_matches_reference(wav16k):
    spec = clip_audio(clip_of(wav16k), RECIPES["cremad"])
    assert spec.shape == RECIPES["cremad"].shape == (257, 188)
    np.testing.assert_allclose(spec, reference_cremad(wav16k), atol=1e-4)


def test_ks_ave_recipe_matches_reference(wav16k):
    spec = clip_audio(clip_of(wav16k), RECIPES["spectrogram"])
    assert spec.shape == RECIPES["spectrogram"].shape == (257, 1004)
    np.testing.assert_allclose(spec, reference_ks_ave(wav16k), atol=1e-4)


def test_vggsound_recipe_full_10s_and_loader_crop(wav16k):
    spec = clip_audio(clip_of(wav16k), RECIPES["vggsound"])
    assert spec.shape == RECIPES["vggsound"].shape == (129, 1251)
    # A 626-column crop of the stored 10 s equals the reference's 5 s STFT except at the crop's
    # edges, whose windows the reference pads by reflection and we fill with the real neighbours.
    for start_col in (0, 300):
        ref = reference_vggsound(wav16k, start_col * 128)
        assert ref.shape == (129, 626)
        first = 0 if start_col == 0 else 1
        np.testing.assert_allclose(spec[:, start_col + first:start_col + 625], ref[:, first:625], atol=1e-4)


def test_fbank_recipe_matches_process_audio(wav16k):
    torch = pytest.importorskip("torch")
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    import soundfile as sf
    # data/KineticSound/process_audio.py; torchaudio.load reads the same float32 samples as soundfile
    waveform = torch.from_numpy(sf.read(str(wav16k), dtype="float32")[0])[None]
    waveform = waveform - waveform.mean()
    fbank = kaldi.fbank(waveform, htk_compat=True, sample_frequency=16000, use_energy=False,
                        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    fbank = torch.nn.ZeroPad2d((0, 0, 0, 1024 - fbank.shape[0]))(fbank)
    ref = ((fbank - (-4.503877)) / (5.141276 * 2)).numpy()            # [1024, 128] time first
    spec = clip_audio(clip_of(wav16k), RECIPES["fbank"])
    assert spec.shape == (128, 1024)                                   # stored freq first
    np.testing.assert_allclose(spec, ref.T, atol=1e-4)


def test_tile_fills_short_clips():
    # the reference's fixed np.tile(x, 10) left clips under 16000 samples short (issue #1, 257x98)
    y = np.arange(7, dtype=np.float32)
    out = tile_to(y, 160000)
    assert out.shape == (160000,) and out[7] == 0 and out[-1] == (160000 - 1) % 7
    assert RECIPES["spectrogram"](np.full(5000, 0.1, np.float32)).shape == (257, 1004)


def test_feature_recipe_pads_and_cuts():
    r = FeatureRecipe(freq=4, frames=6)
    assert r(np.ones((4, 3))).tolist()[0] == [1, 1, 1, 0, 0, 0]
    assert r(np.ones((4, 9))).shape == (4, 6)


def test_frame_positions():
    assert wanted_frame_indices(30, FrameSpec(4, (8, 8), "first")) == [0, 30, 60, 90]
    assert wanted_frame_indices(29.97, FrameSpec(3, (8, 8), "first")) == [0, 29, 58]   # int(fps), as the reference
    assert wanted_frame_indices(25, FrameSpec(3, (8, 8), "middle")) == [12, 38, 62]    # round((s + .5) * fps)


@pytest.mark.parametrize("suffix,at,expected", [(".flv", "first", [0, 30, 60]), (".mp4", "middle", [15, 45, 75])])
def test_read_video_frames_picks_1fps(tmp_path, suffix, at, expected):
    path = synth.write_video(tmp_path / f"v{suffix}", seconds=2.7, fps=30, hw=(48, 64))
    frames = read_video_frames(str(path), FrameSpec(max_frames=4, hw=(24, 40), at=at))
    assert frames.dtype == np.uint8 and frames.shape == (3, 24, 40, 3)   # 81 frames: 3 seconds started
    assert [synth.frame_index_of(f) for f in frames] == [i % 32 for i in expected]


def test_audio_from_container_track(tmp_path):
    sr, freq = 16000, 500
    path = synth.write_video(tmp_path / "a.mp4", 2.0, 25, (48, 64), wave=synth.tone(2.0, sr, freq))
    y = load_wave(str(path), sr)
    assert abs(len(y) - 2 * sr) < 2048                   # AAC adds priming / padding samples
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * sr / len(y) - freq) < 5


def test_splits_helpers_are_seeded_and_stratified():
    names = [f"{1001 + i}" for i in range(91)]
    val = holdout_names(names, 0.1, seed=0)
    assert len(val) == 9 and val == holdout_names(reversed(names), 0.1, seed=0) != holdout_names(names, 0.1, seed=1)
    labels = [i % 3 for i in range(300)]
    mask = stratified_holdout(labels, 0.1, seed=0)
    assert mask.sum() == 30 and np.bincount(np.asarray(labels)[mask]).tolist() == [10, 10, 10]
    assert stratified_holdout([0, 1, 2] * 2, 0.1, seed=0).sum() == 1   # small sets still get a val row
    assert even_subset(10, 3) == [0, 4, 9] and even_subset(2, 3) == [0, 1]


def test_clip_shorter_than_half_a_second_keeps_its_first_frame(tmp_path):
    path = synth.write_video(tmp_path / "short.mp4", seconds=0.3, fps=30, hw=(48, 64))   # 9 frames < frame 15
    frames = read_video_frames(str(path), FrameSpec(max_frames=10, hw=(16, 16), at="middle"))
    assert frames.shape == (1, 16, 16, 3) and synth.frame_index_of(frames[0]) == 0
