"""Export of text and audio models: the network from the tensor the input processor produces
(token ids with a dynamic length, the fixed-length waveform with the log-mel front end inside
the graph), the processor's steps in the metadata, and onnxruntime equal to
``Predictor.predict`` from the raw text / audio column (probabilities within 1e-5, labels
identical), small models trained for one epoch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]  # (ships no type information)
import pandas as pd
import pytest
import soundfile as sf

import polytask
from polytask.export import OnnxPredictor, export_onnx
from polytask.export.runtime import trim_ids
from polytask.export.verify import ColumnDiff, compare_predictions
from polytask.tasks import Task
from test_text import _sentiment_frame
from test_text import _tasks as _text_tasks

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TOL = 1e-5
ONE_EPOCH = {"epochs": 1, "batch_size": 32, "progress": False}
SR = 8000


def _assert_equal(diffs: list[ColumnDiff]) -> None:
    bad = [d for d in diffs if not d.within(TOL, TOL)]
    assert not bad, bad
    assert diffs


def _meta(path: Path) -> dict[str, Any]:
    """The metadata, JSON values parsed (version, format and exporter are plain strings)."""
    plain = ("polytask.version", "polytask.format", "polytask.exporter")
    raw = {p.key: p.value for p in onnx.load(path).metadata_props}
    return {k: v if k in plain else json.loads(v) for k, v in raw.items()}


def _text_rows() -> pd.DataFrame:
    """Fresh texts and the awkward ones: empty, missing, unknown words only, longer than
    max_tokens."""
    rows = _sentiment_frame(30, seed=1)
    rows = rows.astype({"text": object})
    rows.loc[0, "text"] = ""
    rows.loc[1, "text"] = None
    rows.loc[2, "text"] = "zebra quantum xylophone"
    rows.loc[3, "text"] = " ".join(["great movie and the plot was superb"] * 5)
    return rows


TEXT_MODELS = {
    "embedding_bag, counted bigrams": (
        {"name": "embedding_bag", "dim": 16, "widths": [16]},
        {"ngrams": 2, "ngram_mode": "counted", "ngram_min_frequency": 1},
    ),
    "embedding_bag, hashed bigrams": (
        {"name": "embedding_bag", "dim": 16, "widths": []},
        {"ngrams": 2, "ngram_buckets": 64},
    ),
    "transformer": ({"name": "transformer", "width": 16, "heads": 2, "layers": 2}, {}),
}


@pytest.mark.parametrize("model_name", list(TEXT_MODELS))
def test_text_model_from_the_raw_texts(
    tmp_path_factory: pytest.TempPathFactory, model_name: str
) -> None:
    encoder, data_input = TEXT_MODELS[model_name]
    root = tmp_path_factory.mktemp("export_text")
    polytask.fit(
        _sentiment_frame(200, seed=0),
        _text_tasks(),
        out=root / "run",
        baselines=False,
        data_options={"input": {"name": "text", "max_tokens": 16, **data_input}},
        model={"encoder": encoder},
        train=ONE_EPOCH,
        quiet=True,
    )
    model, path, rows = root / "run" / "model", root / "m.onnx", _text_rows()
    export_onnx(model, path)  # the default exporter: dynamo
    predictor = polytask.load(model)
    expected = predictor.predict(rows)
    runtime = OnnxPredictor(path)
    _assert_equal(compare_predictions(expected, runtime.predict(rows)))
    # One row, and a batch of empty texts only (trimmed to one column), equal too.
    for part in (rows.iloc[[3]], rows.iloc[[0, 1]]):
        _assert_equal(compare_predictions(predictor.predict(part), runtime.predict(part)))

    graph = onnx.load(path)
    shapes = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in graph.graph.input
    }
    assert shapes["tokens"] == ["batch", "tokens_length"]
    if data_input:
        assert shapes["ngrams"] == ["batch", "ngrams_length"]
    # Masking, not trimming: the untrimmed ids (every row padded to max_tokens) give the
    # same probabilities, and so does any width between the longest row and max_tokens.
    full = {k: v.numpy() for k, v in predictor.preprocessor.transform(rows, "rows").items()}
    assert full["tokens"].shape[1] == 16
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for feeds in (full, {k: trim_ids(v, 0) for k, v in full.items()}):
        (proba,) = session.run(["sentiment_proba"], feeds)
        np.testing.assert_allclose(proba, expected["sentiment_proba"], rtol=0, atol=TOL)

    meta = _meta(path)
    described = meta["polytask.input_processor"]
    assert described["name"] == "text" and described["max_tokens"] == 16
    assert described["pad_id"] == 0 and described["unknown_id"] == 1
    assert described["vocabulary_size"] == len(
        meta["polytask.preprocessing"]["state"]["vocabulary"]
    )
    if data_input:
        assert described["ngrams"]["mode"] == data_input.get("ngram_mode", "hashed")
    tokens = next(i for i in meta["polytask.inputs"] if i["name"] == "tokens")
    assert tokens == {
        "name": "tokens",
        "type": "token_ids",
        "dtype": "int64",
        "shape": ["batch", "tokens_length"],
        "max_length": 16,
        "pad_id": 0,
    }
    steps = " ".join(meta["polytask.preprocessing_steps"])
    assert "lower-cased" in steps and "padded with 0" in steps


def test_trim_ids_keeps_one_column() -> None:
    ids = np.array([[3, 4, 0, 0], [5, 0, 0, 0]])
    assert trim_ids(ids, 0).tolist() == [[3, 4], [5, 0]]
    assert trim_ids(np.zeros((2, 4), dtype=np.int64), 0).shape == (2, 1)
    assert trim_ids(np.zeros((0, 4), dtype=np.int64), 0).shape == (0, 1)


# -- audio -----------------------------------------------------------------------------------
FREQS = {"low": 300.0, "mid": 900.0, "high": 2000.0}


def _tones(n: int, seed: int) -> pd.DataFrame:
    """Noisy tones of three pitches (multiclass) and two lengths (binary), as arrays."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        pitch = list(FREQS)[i % 3]
        long = bool(rng.random() < 0.5)
        seconds = rng.uniform(0.2, 0.3) if long else rng.uniform(0.05, 0.12)
        t = np.arange(round(seconds * SR)) / SR
        wave = rng.uniform(0.3, 0.9) * np.sin(2 * np.pi * FREQS[pitch] * t + rng.uniform(0, 6))
        rows.append(
            {
                "audio": (wave + rng.normal(0, 0.01, t.size)).astype(np.float32),
                "pitch": pitch,
                "long": int(long),
            }
        )
    return pd.DataFrame(rows)


def test_audio_model_from_the_raw_recordings(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("export_audio")
    polytask.fit(
        _tones(60, seed=0),
        [Task("pitch", "multiclass", "pitch"), Task("long", "binary", "long")],
        out=root / "run",
        baselines=False,
        data_options={"input": {"name": "audio", "sample_rate": SR, "seconds": 0.25}},
        model={
            "encoder": {
                "name": "audio_cnn",
                "n_fft": 128,
                "hop": 64,
                "n_mels": 24,
                "widths": [4, 8],
            },
            "head": {"widths": []},
        },
        train={**ONE_EPOCH, "batch_size": 16},
        quiet=True,
    )
    model, path = root / "run" / "model", root / "m.onnx"
    export_onnx(model, path)
    predictor, runtime = polytask.load(model), OnnxPredictor(path)
    # Arrays (one longer than 0.25 s: cropped), then wav files read by the processor.
    rows = _tones(12, seed=1)
    _assert_equal(compare_predictions(predictor.predict(rows), runtime.predict(rows)))
    folder = root / "wav"
    folder.mkdir()
    for i, wave in enumerate(rows["audio"]):
        sf.write(folder / f"{i}.wav", wave, SR, subtype="PCM_16")
    files = pd.DataFrame({"audio": [f"{i}.wav" for i in range(len(rows))]})
    expected = predictor.predict(files, base_dir=folder)
    _assert_equal(compare_predictions(expected, runtime.predict(files, base_dir=folder)))

    meta = _meta(path)
    assert meta["polytask.inputs"] == [
        {"name": "audio", "type": "tensor", "dtype": "float32", "shape": ["batch", 2000]}
    ]
    described = meta["polytask.input_processor"]
    assert described["sample_rate"] == SR and described["samples"] == 2000
    features = described["features_in_graph"]
    assert features["type"] == "log-mel spectrogram"
    assert features["stft"]["n_fft"] == 128 and features["stft"]["hop"] == 64
    assert features["mel"] == {
        "n_mels": 24,
        "f_min": 0.0,
        "f_max": 4000.0,
        "scale": "HTK: 2595 log10(1 + f / 700), peak-normalised triangles",
    }
    steps = " ".join(meta["polytask.preprocessing_steps"])
    assert "8000 Hz" in steps and "in the graph: log-mel" in steps
    # The front end is in the graph: a client feeds the waveform.
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "STFT" in ops or "DFT" in ops, sorted(ops)
