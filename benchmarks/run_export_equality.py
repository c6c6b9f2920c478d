"""Export equality: an exported ONNX graph under onnxruntime against ``Predictor.predict``.

For every model below: train it briefly (equality does not need a good model, only the same
one on both sides), export it with ``polytask.export.export_onnx`` (default exporter: dynamo,
falling back to TorchScript), predict held-out rows with both and compare every prediction
column (``polytask.export.verify.compare_predictions``): probabilities and values by their
largest absolute difference (and relative, for values in a large unit), labels by identity.

Models:

* the example configs whose data is on this machine (``examples/*.toml``), on a subsample of
  their rows (``--rows`` training rows; held-out rows: the dataset's own test split where it
  has a split column, else rows outside the subsample), one epoch, no baselines;
* generated data for what the examples lack: a table with all four table kinds (binary,
  multiclass, multilabel, regression; a categorical feature with missing and unseen values)
  under each sharing architecture for tables, a COSMOS preference-conditioned model (FiLM and
  input conditioning, predicted at the preference 0.8 / 0.2), an image model with the five
  image kinds (segmentation and dense regression included) under hard sharing and MTAN, text
  models from raw texts (the bag of embeddings with counted bigrams and the Transformer
  encoder; empty, missing and over-long texts included) and an audio model from raw waveforms
  (the log-mel front end inside the graph).

Usage::

    python benchmarks/run_export_equality.py [--rows 3000] [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import polytask
from common import (
    RESULTS_DIR,
    example_config,
    machine_info,
    machine_lines,
    markdown_table,
    write_results,
)
from polytask.data.datasets import DATASETS, data_available, load_dataset
from polytask.data.synthetic import make_mmoe_synthetic
from polytask.export import OnnxPredictor, export_onnx
from polytask.export.verify import compare_predictions
from polytask.run.pipeline import run
from polytask.tasks import Task

EXAMPLES = ["census", "diabetes", "tox21", "qm8", "multimnist", "fsdd", "fdu_mtl"]
TABLE_ARCHITECTURES = ["hard", "mmoe", "ple", "cross_stitch", "soft"]
TOL = 1e-5


def compare(
    model: Path,
    test: pd.DataFrame,
    path: Path,
    preference: Any = None,
    base_dir: Path | None = None,
) -> dict[str, Any]:
    """Export ``model`` and compare both predictors on ``test``: one result row."""
    started = time.perf_counter()
    export_onnx(model, path)
    seconds = time.perf_counter() - started
    runtime = OnnxPredictor(path)
    predictor = polytask.load(model)
    expected = predictor.predict(test, preference=preference, base_dir=base_dir)
    got = runtime.predict(test, preference=preference, base_dir=base_dir)
    diffs = compare_predictions(expected, got)
    proba = [d for d in diffs if d.numeric and "_proba" in d.column]
    values = [d for d in diffs if d.numeric and "_proba" not in d.column]
    labels = [d for d in diffs if not d.numeric and d.column != predictor.id_column]
    return {
        "kinds": sorted({t.kind for t in predictor.tasks}),
        "rows": len(test),
        "exporter": _exporter(path),
        "export_seconds": round(seconds, 1),
        "proba_max_abs": max((d.max_abs for d in proba), default=None),
        "value_max_abs": max((d.max_abs for d in values), default=None),
        "value_max_rel": max((d.max_rel for d in values), default=None),
        "labels_identical": all(d.identical for d in labels),
        "equal": all(d.within(TOL, TOL) for d in diffs),
    }


def _exporter(path: Path) -> str:
    import onnx

    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    return meta.get("polytask.exporter", "?")


# -- the example configs ---------------------------------------------------------------------
def example_rows(name: str, rows: int) -> tuple[Any, pd.DataFrame, pd.DataFrame]:
    """The example's config (one epoch, no baselines), training frame and held-out rows."""
    cfg = example_config(name, ["train.epochs=1", "baselines=false", "train.progress=false"])
    if cfg.data.dataset is None:
        raise ValueError("a config of several sources (data.sources) is not subsampled here")
    info = DATASETS[cfg.data.dataset]
    frame = load_dataset(cfg.data.dataset)
    # A subsample is passed as a frame, so what data.dataset implies is set by hand, as
    # data/prepare.py does for a dataset: its group, and every label column kept out of the
    # features (but the trained tasks' own).
    trained = {
        c for t in cfg.tasks for c in ([t.target] if isinstance(t.target, str) else t.target)
    }
    ignore = sorted((set(cfg.data.ignore) | set(info.ignore) | set(info.targets)) - trained)
    data = cfg.data.model_copy(
        update={"dataset": None, "group": cfg.data.group or info.group, "ignore": ignore}
    )
    cfg = cfg.model_copy(update={"data": data})
    rng = np.random.default_rng(0)
    if "split" in frame.columns:
        # At most half of a small test split goes to training's held-out part, so rows are
        # left to compare on (FSDD's test split has 300 recordings).
        sizes = {s: int((frame["split"] == s).sum()) for s in ("train", "val", "test")}
        wanted = {"train": rows, "val": rows // 5, "test": min(rows // 5, sizes["test"] // 2)}
        parts = [
            frame[frame["split"] == s].sample(min(n, sizes[s]), random_state=0)
            for s, n in wanted.items()
        ]
        train = pd.concat(parts, ignore_index=True)
        test = frame[frame["split"] == "test"].drop(parts[2].index, errors="ignore").head(500)
    else:
        order = rng.permutation(len(frame))
        train = frame.iloc[order[:rows]].reset_index(drop=True)
        test = frame.iloc[order[rows : rows + 500]].reset_index(drop=True)
    return cfg, train, test


def run_example(name: str, rows: int, work: Path) -> dict[str, Any]:
    cfg, train, test = example_rows(name, rows)
    out = work / name
    run(cfg, frame=train, out=out, quiet=True)
    return compare(out / "model", test, work / f"{name}.onnx")


# -- generated data --------------------------------------------------------------------------
def four_kinds_table(n: int, seed: int) -> pd.DataFrame:
    """The MMoE synthetic features (20 of them) with four kinds of targets and a categorical
    feature ``zone`` (some missing)."""
    raw = make_mmoe_synthetic(n, 0.5, n_features=20, seed=seed)
    y0, y1 = raw["y2_raw"].to_numpy(), raw["y_regression"].to_numpy()
    y0 = (y0 - y0.mean()) / y0.std()
    y1 = (y1 - y1.mean()) / y1.std()
    frame = raw.drop(columns=["y_regression", "y_binary", "y2_raw"])
    rng = np.random.default_rng(seed)
    frame["zone"] = pd.Series(rng.choice(["north", "south", "east"], n)).mask(rng.random(n) < 0.1)
    frame["up"] = np.where(y0 > 0, "yes", "no")
    frame["band"] = pd.cut(y1, [-np.inf, -1.0, 1.0, np.inf], labels=["low", "mid", "high"]).astype(
        str
    )
    frame["a"], frame["b"] = (y0 > 0.5).astype(float), (y1 > 0).astype(float)
    frame["value"] = 100.0 * y1 + 5000.0
    return frame


FOUR_TASKS = [
    Task("up", "binary", "up"),
    Task("band", "multiclass", "band"),
    Task("flags", "multilabel", ["a", "b"]),
    Task("value", "regression", "value"),
]


def table_test_rows(seed: int) -> pd.DataFrame:
    rows = four_kinds_table(500, seed)
    rows = rows.astype({"zone": object})
    rows.loc[0, "zone"] = "unseen"
    rows.loc[1, "x0"] = np.nan
    # 50 standard deviations out: far outside training, still a number a float32 network sums
    # without losing the digits the comparison looks at (at 1e12 the z-score is clipped to
    # 1e6 and both runtimes sum terms of 1e6 in float32, in different orders).
    rows.loc[2, "x1"] = 50.0
    return rows


def run_table(arch: str, work: Path, conditioning: str | None = None) -> dict[str, Any]:
    name = f"table_{arch}" + (f"_cosmos_{conditioning}" if conditioning else "")
    out = work / name
    model: dict[str, Any] = {"encoder": {"widths": [32, 16]}, "architecture": {"name": arch}}
    balancer = None
    if conditioning is not None:
        model["preference_conditioning"] = conditioning
        model["encoder"]["norm"] = "batch"
        balancer = {"name": "cosmos"}
    polytask.fit(
        four_kinds_table(3000, 0),
        FOUR_TASKS,
        out=out,
        baselines=False,
        model=model,
        balancer=balancer,
        train={"epochs": 2, "batch_size": 128, "progress": False},
        quiet=True,
    )
    preference = [0.8, 0.2, 0.0, 0.0] if conditioning else None
    return compare(out / "model", table_test_rows(1), work / f"{name}.onnx", preference)


def shapes(n: int, seed: int) -> pd.DataFrame:
    """16 x 16 grey images of a bright square on noise: which quadrant (multiclass), bright or
    not (binary), its brightness (regression), its mask (segmentation) and a depth map."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        r0, c0 = int(rng.integers(0, 12)), int(rng.integers(0, 12))
        level = int(rng.integers(90, 256))
        mask = np.zeros((16, 16), dtype=np.int64)
        mask[r0 : r0 + 4, c0 : c0 + 4] = 1
        image = np.where(mask == 1, level, rng.integers(0, 40, (16, 16))).astype(np.uint8)
        quadrant = ("top" if r0 < 6 else "bottom") + ("left" if c0 < 6 else "right")
        depth = np.where(mask == 1, 1.0, 3.0).astype(np.float32)
        rows.append(
            {
                "image": image,
                "where": quadrant,
                "bright": int(level > 170),
                "level": level / 255.0,
                "mask": mask,
                "depth": depth,
            }
        )
    return pd.DataFrame(rows)


IMAGE_TASKS = [
    Task("where", "multiclass", "where"),
    Task("bright", "binary", "bright"),
    Task("level", "regression", "level"),
    Task("mask", "segmentation", "mask"),
    Task("depth", "dense_regression", "depth"),
]


def run_image(arch: str, work: Path) -> dict[str, Any]:
    out = work / f"image_{arch}"
    polytask.fit(
        shapes(400, 0),
        IMAGE_TASKS,
        out=out,
        baselines=False,
        data_options={"input": {"name": "image"}},
        model={
            "encoder": {"name": "cnn", "widths": [8, 16]},
            "head": {"decoder_channels": [8]},
            "architecture": {"name": arch},
        },
        train={"epochs": 2, "batch_size": 32, "progress": False},
        quiet=True,
    )
    return compare(out / "model", shapes(100, 1), work / f"image_{arch}.onnx")


WORDS = {
    "good": ["great", "excellent", "love", "superb"],
    "bad": ["awful", "terrible", "hate", "boring"],
}
FILLER = ["the", "movie", "plot", "a", "was", "and", "it", "story", "film", "scene"]


def texts(n: int, seed: int) -> pd.DataFrame:
    """Short reviews: filler, two words of one polarity (binary) and a topic (multiclass)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        mood = str(rng.choice(list(WORDS)))
        topic = str(rng.choice(["sport", "food", "music"]))
        words = [*rng.choice(FILLER, int(rng.integers(3, 12))), *rng.choice(WORDS[mood], 2)]
        words.append(topic)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "mood": mood, "topic": topic})
    frame = pd.DataFrame(rows).astype({"text": object})
    frame.loc[0, "text"], frame.loc[1, "text"] = "", None
    frame.loc[2, "text"] = " ".join(["great film"] * 20)  # over max_tokens: truncated
    return frame


TEXT_ENCODERS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "embedding_bag": (
        {"name": "embedding_bag", "dim": 32, "widths": [16]},
        {"ngrams": 2, "ngram_mode": "counted", "ngram_min_frequency": 1},
    ),
    "transformer": ({"name": "transformer", "width": 32, "heads": 4, "layers": 2}, {}),
}


def run_text(encoder: str, work: Path) -> dict[str, Any]:
    out = work / f"text_{encoder}"
    params, data_input = TEXT_ENCODERS[encoder]
    polytask.fit(
        texts(600, 0),
        [Task("mood", "binary", "mood", positive="good"), Task("topic", "multiclass", "topic")],
        out=out,
        baselines=False,
        data_options={"input": {"name": "text", "max_tokens": 24, **data_input}},
        model={"encoder": params},
        train={"epochs": 1, "batch_size": 32, "progress": False},
        quiet=True,
    )
    return compare(out / "model", texts(200, 1), work / f"text_{encoder}.onnx")


def tones(n: int, seed: int) -> pd.DataFrame:
    """Noisy tones at 8 kHz, 0.1-0.4 s: pitch (multiclass) and length (regression, s)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        pitch = (300.0, 900.0, 2000.0)[i % 3]
        seconds = float(rng.uniform(0.1, 0.4))
        t = np.arange(round(seconds * 8000)) / 8000
        wave = rng.uniform(0.3, 0.9) * np.sin(2 * np.pi * pitch * t + rng.uniform(0, 6))
        wave = (wave + rng.normal(0, 0.01, t.size)).astype(np.float32)
        rows.append({"audio": wave, "pitch": f"{pitch:g} Hz", "seconds": seconds})
    return pd.DataFrame(rows)


def run_audio(work: Path) -> dict[str, Any]:
    out = work / "audio"
    polytask.fit(
        tones(120, 0),
        [Task("pitch", "multiclass", "pitch"), Task("seconds", "regression", "seconds")],
        out=out,
        baselines=False,
        data_options={"input": {"name": "audio", "sample_rate": 8000, "seconds": 0.3}},
        model={
            "encoder": {"name": "audio_cnn", "n_fft": 128, "hop": 64, "n_mels": 24},
            "head": {"widths": []},
        },
        train={"epochs": 1, "batch_size": 16, "progress": False},
        quiet=True,
    )
    return compare(out / "model", tones(60, 1), work / "audio.onnx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000, help="training rows per example")
    parser.add_argument("--quick", action="store_true", help="generated data only")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    torch.set_num_threads(1)
    jobs: list[tuple[str, Callable[[Path], dict[str, Any]]]] = []
    if not args.quick:
        for name in EXAMPLES:
            jobs.append((f"example {name}", lambda w, n=name: run_example(n, args.rows, w)))
    for arch in TABLE_ARCHITECTURES:
        jobs.append((f"generated table, {arch}", lambda w, a=arch: run_table(a, w)))
    for mode in ("film", "input"):
        jobs.append(
            (f"generated table, COSMOS ({mode})", lambda w, m=mode: run_table("hard", w, m))
        )
    for arch in ("hard", "mtan"):
        jobs.append((f"generated images, {arch}", lambda w, a=arch: run_image(a, w)))
    for encoder in TEXT_ENCODERS:
        jobs.append((f"generated texts, {encoder}", lambda w, e=encoder: run_text(e, w)))
    jobs.append(("generated audio, audio_cnn", run_audio))
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, job in jobs:
            name = label.removeprefix("example ")
            if label.startswith("example ") and not data_available(_dataset(name)):
                results[label] = {"skipped": "data not on this machine"}
                continue
            try:
                results[label] = job(Path(tmp))
            except Exception as exc:  # one model's failure is a row of the table, not the end
                results[label] = {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            print(label, results[label], flush=True)
    info = machine_info()
    rows = []
    for label, r in results.items():
        if "kinds" not in r:
            reason = r.get("skipped") or r.get("failed", "")
            rows.append([label, "-", "-", "-", "-", "-", "-", reason])
            continue
        rows.append(
            [
                label,
                ", ".join(r["kinds"]),
                r["exporter"],
                _sci(r["proba_max_abs"]),
                _sci(r["value_max_abs"]),
                _sci(r["value_max_rel"]),
                "yes" if r["labels_identical"] else "NO",
                "yes" if r["equal"] else "NO",
            ]
        )
    header = [
        "model",
        "kinds",
        "exporter",
        "probabilities: max abs diff",
        "values: max abs diff",
        "values: max rel diff",
        "labels identical",
        f"equal (tol {TOL:g})",
    ]
    markdown = [
        "# Export equality: onnxruntime vs Predictor.predict",
        "",
        "Each model trained briefly, exported with `polytask.export.export_onnx` (default "
        "exporter), and both predictors run on held-out rows (missing numbers, unseen "
        "categories, a number 50 standard deviations outside the training range included in "
        "the generated tables; empty, missing and over-long texts in the generated texts). "
        "Text and audio models are fed their raw column, which the ONNX runner turns into the "
        "graph's input with polytask's own input processor (token ids trimmed to the longest "
        "row; the log-mel front end is inside the graph). Probabilities: the largest absolute "
        "difference over every "
        "probability column; values (regression, per-pixel): the largest absolute difference "
        "and the largest difference relative to the torch value (a value column is equal when "
        "either is within the tolerance). Produced by `benchmarks/run_export_equality.py`.",
        "",
        *markdown_table(header, rows),
        "",
        *machine_lines(info),
        f"- onnxruntime: {_ort_version()}",
    ]
    write_results("export", markdown, {"results": results, "machine": info}, args.out)


def _sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def _dataset(example: str) -> str:
    dataset = example_config(example).data.dataset
    return dataset or example


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


if __name__ == "__main__":
    main()
