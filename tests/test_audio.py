"""Audio: the input processor (files and arrays, sample rate, fixed length, JSON state), the
log-mel + CNN encoder (filterbank against a NumPy reference, a tone lands in its band,
SpecAugment), training on generated tones read from wav files, and the FSDD loader."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from polytask import config_from_dict, load, run
from polytask.config import load_config
from polytask.data.inputs import InputProcessor, input_from_dict
from polytask.data.inputs.base import build_input
from polytask.data.spec import InputSpec
from polytask.errors import ConfigError, DataError
from polytask.models.audio import (
    AudioCNNParams,
    LogMel,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
    spec_augment,
)
from polytask.models.encoders import ENCODERS

SR = 8000
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.usefixtures("torch_single_thread")


# -- the mel filterbank --------------------------------------------------------------------


def reference_filterbank(
    n_fft: int, sr: int, n_mels: int, f_min: float, f_max: float
) -> np.ndarray:
    """HTK mel triangles, written independently: each filter is the piecewise-linear function
    through (left, 0), (centre, 1), (right, 0), evaluated with np.interp at the FFT bins."""

    def mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(np.array(f_min)), mel(np.array(f_max)), n_mels + 2))
    freqs = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    return np.stack([np.interp(freqs, edges[i : i + 3], [0.0, 1.0, 0.0]) for i in range(n_mels)])


@pytest.mark.parametrize(
    ("n_fft", "sr", "n_mels", "f_min", "f_max"),
    [(256, 8000, 40, 0.0, 4000.0), (512, 16000, 64, 20.0, 7600.0), (400, 16000, 23, 0.0, 8000.0)],
)
def test_mel_filterbank_matches_a_numpy_reference(
    n_fft: int, sr: int, n_mels: int, f_min: float, f_max: float
) -> None:
    ours = mel_filterbank(n_fft, sr, n_mels, f_min, f_max).numpy()
    ref = reference_filterbank(n_fft, sr, n_mels, f_min, f_max)
    assert ours.shape == (n_mels, n_fft // 2 + 1)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    # Anchors of the HTK scale: 1000 Hz is 999.985 mel, 4000 Hz is 2146.06 mel.
    mels = hz_to_mel(torch.tensor([1000.0, 4000.0], dtype=torch.float64))
    np.testing.assert_allclose(mels.numpy(), [999.985, 2146.06], atol=5e-3)
    assert torch.allclose(mel_to_hz(mels), torch.tensor([1000.0, 4000.0], dtype=torch.float64))


@pytest.mark.parametrize("freq", [250.0, 1000.0, 2600.0])
def test_a_sine_peaks_in_the_mel_band_holding_its_frequency(freq: float) -> None:
    front = LogMel(SR, n_fft=256, hop=128, n_mels=40, normalize="none")
    t = np.arange(SR) / SR
    wave = torch.tensor(np.sin(2 * np.pi * freq * t), dtype=torch.float32)[None]
    energy = front(wave)[0].mean(dim=1)
    # The band whose triangle is highest at the tone's own frequency.
    edges = 700.0 * (10 ** (np.linspace(0, 2595 * np.log10(1 + 4000 / 700), 42) / 2595) - 1)
    heights = [np.interp(freq, edges[i : i + 3], [0, 1, 0]) for i in range(40)]
    assert int(energy.argmax()) == int(np.argmax(heights))
    # And clearly so: 10 bands away the log energy is lower by more than 5 (a factor e^5).
    assert float(energy.max() - energy[(int(energy.argmax()) + 10) % 40]) > 5.0


def test_spec_augment_masks_bands_with_the_mean() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 20, 30)
    out = spec_augment(x, masks=1, width=5, dim=2)
    changed = (out != x).any(dim=1)  # [B, frames]
    widths = changed.sum(dim=1)
    assert int(widths.max()) <= 5 and int(widths.min()) == 0  # w ~ U[0, 5]
    # Masked frames hold the example's mean; the others are untouched.
    b = int(widths.argmax())
    cols = changed[b].nonzero().flatten()
    assert (cols.max() - cols.min() + 1) == len(cols)  # one consecutive band
    assert torch.allclose(out[b][:, cols], x[b].mean().expand(20, len(cols)))
    assert torch.equal(spec_augment(x, masks=0, width=5, dim=1), x)


def test_encoder_rejects_other_inputs_and_bad_frequencies() -> None:
    build = ENCODERS.get("audio_cnn").factory
    with pytest.raises(ConfigError, match="reads audio inputs"):
        build(InputSpec(kind="image", shape=[1, 8, 8]), AudioCNNParams())
    with pytest.raises(ConfigError, match="f_max <= 4000"):
        build(InputSpec(kind="audio", shape=[SR], sample_rate=SR), AudioCNNParams(f_max=5000))
    with pytest.raises(ConfigError, match="covers no FFT bin"):
        build(InputSpec(kind="audio", shape=[SR], sample_rate=SR), AudioCNNParams(n_fft=32))
    encoder = build(InputSpec(kind="audio", shape=[SR], sample_rate=SR), AudioCNNParams())
    assert encoder.spatial and not [n for n, _ in encoder.frontend.named_parameters()]
    # 8000 samples, hop 128 -> 63 frames; 40 bands; two stride-2 stages -> 10 x 16 maps, the
    # 10 bands folded into the 64 channels.
    assert encoder({"audio": torch.zeros(2, SR)}).shape == (2, 64 * 10, 1, 16)


# -- the input processor -------------------------------------------------------------------


def tone(freq: float, seconds: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    wave = rng.uniform(0.3, 0.9) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    return (wave + rng.normal(0, 0.01, t.size)).astype(np.float32)


def audio(**params: object) -> InputProcessor:
    return build_input("audio", dict(params))


def test_arrays_are_mixed_down_scaled_padded_and_cropped() -> None:
    stereo = np.stack([np.ones(6), np.zeros(6)], axis=1)  # samples x channels
    pcm = np.array([16384, -32768, 0], dtype=np.int16)
    df = pd.DataFrame({"audio": [np.arange(1, 5, dtype=np.float32), stereo, pcm]})
    proc = audio(sample_rate=100)
    proc.fit(df.iloc[:2], "t", None)
    # Default length: the longest training clip (6 samples).
    assert proc.input_spec.shape == [6] and proc.input_spec.sample_rate == 100
    out = proc.transform(df, "t")["audio"].numpy()
    np.testing.assert_allclose(out[0], [1, 2, 3, 4, 0, 0])
    np.testing.assert_allclose(out[1], [0.5] * 6)
    np.testing.assert_allclose(out[2], [0.5, -1.0, 0, 0, 0, 0])
    # A fixed length crops (start or centre) and the fitted length is capped.
    long = pd.DataFrame({"audio": [np.arange(10, dtype=np.float32)]})
    crop = audio(sample_rate=100, seconds=0.04, crop="center")
    crop.fit(long, "t", None)
    np.testing.assert_allclose(crop.transform(long, "t")["audio"][0], [3, 4, 5, 6])
    capped = audio(sample_rate=100, max_seconds=0.05)
    capped.fit(long, "t", None)
    np.testing.assert_allclose(capped.transform(long, "t")["audio"][0], [0, 1, 2, 3, 4])


def test_state_round_trips_through_json(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i, seconds in enumerate([0.2, 0.35, 0.3]):
        sf.write(tmp_path / f"c{i}.wav", tone(440, seconds, rng), SR, subtype="PCM_16")
    df = pd.DataFrame({"clip": ["c0.wav", "c1.wav", "c2.wav"]})
    proc = audio(column="clip")
    proc.fit(df, "t", tmp_path)
    # The rate is read from the first file, the length is the longest file's.
    assert proc.state() == {"sample_rate": SR, "samples": 2800}
    again = input_from_dict(json.loads(json.dumps(proc.to_dict())))
    assert again.input_spec == proc.input_spec
    a = proc.transform(df, "t", tmp_path)["audio"]
    b = again.transform(df, "t", tmp_path)["audio"]
    assert torch.equal(a, b) and a.shape == (3, 2800) and a.dtype == torch.float32
    # The first clip as written (up to 16-bit quantisation), then zero padding.
    written = torch.from_numpy(tone(440, 0.2, np.random.default_rng(0)))
    assert float((a[0, :1600] - written).abs().max()) < 1 / 2**15
    assert not a[0, 1600:].any()


def test_wrong_rate_and_unreadable_files_are_one_line_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "ok.wav", tone(440, 0.1, rng), SR)
    sf.write(tmp_path / "fast.wav", tone(440, 0.1, rng, sr=16000), 16000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wave file")
    proc = audio(sample_rate=SR)
    with pytest.raises(DataError) as err:
        proc.fit(pd.DataFrame({"audio": ["ok.wav", "fast.wav"]}), "t", tmp_path)
    message = str(err.value)
    assert "\n" not in message and "fast.wav" in message and "row 1" in message
    assert "16000 Hz" in message and "expected 8000 Hz" in message
    # Without data.input.sample_rate, the first training file sets the rate.
    with pytest.raises(DataError, match=r"expected 8000 Hz \(the first training file's rate"):
        audio().fit(pd.DataFrame({"audio": ["ok.wav", "fast.wav"]}), "t", tmp_path)
    proc.fit(pd.DataFrame({"audio": ["ok.wav"]}), "t", tmp_path)
    for name, words in (("broken.wav", "cannot read audio file"), ("gone.wav", "not found")):
        with pytest.raises(DataError) as err:
            proc.transform(pd.DataFrame({"audio": [name]}), "t", tmp_path)
        assert "\n" not in str(err.value) and name in str(err.value) and words in str(err.value)
    with pytest.raises(ConfigError, match="sample_rate"):
        audio().fit(pd.DataFrame({"audio": [np.zeros(4)]}), "t", None)


def test_missing_soundfile_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sf.write(tmp_path / "ok.wav", np.zeros(80, dtype=np.float32), SR)
    monkeypatch.setitem(sys.modules, "soundfile", None)  # makes `import soundfile` fail
    with pytest.raises(ConfigError, match=r"pip install 'polytask\[audio\]'"):
        audio().fit(pd.DataFrame({"audio": ["ok.wav"]}), "t", tmp_path)


# -- training on generated tones read from wav files -----------------------------------------


def test_encoder_learns_tones_from_a_folder_of_wav_files(tmp_path: Path) -> None:
    """Three tone frequencies (multiclass) and short vs long clips (binary), written as wav
    files and read back through a folder source whose file names carry the labels."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "clips"
    folder.mkdir()
    freqs = {"low": 300.0, "mid": 900.0, "high": 2000.0}
    for i in range(150):
        name = list(freqs)[i % 3]
        length = "long" if (i // 3) % 2 else "short"
        seconds = rng.uniform(0.4, 0.5) if length == "long" else rng.uniform(0.15, 0.25)
        sf.write(folder / f"{name}_{length}_{i:03d}.wav", tone(freqs[name], seconds, rng), SR)
    raw = {
        "seed": 0,
        "baselines": False,
        "data": {
            "path": str(folder),
            "format": "folder",
            "pattern": "*.wav",
            "regex": r"(?P<pitch>[a-z]+)_(?P<length>[a-z]+)_\d+\.wav",
            "input": {"name": "audio", "column": "path", "sample_rate": SR},
            "split": {"method": "random", "val": 0.2, "test": 0.2},
        },
        "tasks": [
            {"name": "pitch", "kind": "multiclass", "target": "pitch"},
            {"name": "long", "kind": "binary", "target": "length", "positive": "long"},
        ],
        "model": {
            "encoder": {
                "name": "audio_cnn",
                "n_fft": 128,
                "hop": 64,
                "n_mels": 24,
                "widths": [8, 16],
            },
            "head": {"widths": []},
        },
        "train": {
            "epochs": 6,
            "batch_size": 16,
            "lr": 3e-3,
            "progress": False,
            "patience": None,
            # The primary metrics saturate at 1.0 within an epoch or two; the loss keeps
            # ranking the epochs.
            "criterion": "val_loss",
        },
    }
    result = run(config_from_dict(raw), out=tmp_path / "run", quiet=True)
    assert result.metrics["pitch"]["accuracy"] >= 0.9, result.metrics
    assert result.metrics["long"]["accuracy"] >= 0.9, result.metrics
    # Saved and reloaded, the model predicts the same from the same files.
    frame = pd.DataFrame({"path": sorted(p.name for p in folder.glob("*.wav"))[:20]})
    before = result.predictor.predict(frame, base_dir=folder)
    after = load(tmp_path / "run").predict(frame, base_dir=folder)
    pd.testing.assert_frame_equal(before, after)


# -- the FSDD dataset ----------------------------------------------------------------------


def test_fsdd_loader_counts(require_data: Callable[[str], Path]) -> None:
    from polytask.data.datasets import load_dataset
    from polytask.data.datasets.fsdd import RECORDINGS_SHA256, recordings_digest

    root = require_data("fsdd")
    df = load_dataset("fsdd", root)
    assert len(df) == 3000
    assert df["digit"].dtype == "int64" and df["take"].dtype == "int64"
    assert sorted(df["digit"].unique()) == list(range(10))
    assert sorted(df["speaker"].unique()) == [
        "george", "jackson", "lucas", "nicolas", "theo", "yweweler"
    ]  # fmt: skip
    assert df["split"].value_counts().to_dict() == {"train": 2400, "val": 300, "test": 300}
    # Every (speaker, digit) pair has takes 0-49; test = takes 0-4, val = takes 5-9.
    assert (df.groupby(["speaker", "digit"])["take"].nunique() == 50).all()
    assert set(df.loc[df["split"] == "test", "take"]) == set(range(5))
    assert set(df.loc[df["split"] == "val", "take"]) == set(range(5, 10))
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"].iloc[::300])
    assert recordings_digest(root) == RECORDINGS_SHA256


def test_fsdd_example_config_validates() -> None:
    cfg = load_config(EXAMPLES / "fsdd.toml")
    assert cfg.data.dataset == "fsdd" and cfg.data.split.method == "column"
    assert cfg.data.input is not None and cfg.data.input.name == "audio"
    assert cfg.model.encoder.name == "audio_cnn"
    assert {t.name: t.kind for t in cfg.tasks} == {"digit": "multiclass", "speaker": "multiclass"}
