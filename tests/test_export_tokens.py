"""Export of models on the ``tokens`` input (sentences as lists of words): the BiLSTM's
export form equals the packed one, onnxruntime's outputs equal the torch network's raw outputs
(1e-4) and :class:`OnnxPredictor` predicts the torch predictor's columns (the same labels,
heads and relations) for tiny BiLSTM and Transformer models with a tagger (BIO named
entities), a parser and a sentence-level task, trained for one epoch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]  # (ships no type information)
import pandas as pd
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import polytask
from polytask.errors import DataError, PolytaskError
from polytask.export import OnnxPredictor, export_onnx
from polytask.export.verify import compare_predictions
from polytask.models.sequence import bilstm_padded
from polytask.tasks.kinds.dependency import Scores
from polytask.tasks.kinds.token_classification import repair_bio
from polytask.tasks.trees import decode_tree

pytestmark = pytest.mark.usefixtures("torch_single_thread")

RAW_TOL = 1e-4
TOKENS_INPUT = {"name": "tokens", "column": "form", "min_frequency": 2}
ENCODER = {"name": "tokens", "word_dim": 12, "char_dim": 6, "char_filters": 6, "width": 16}
BODIES = {
    "bilstm": {**ENCODER, "body": "bilstm", "layers": 2},
    "transformer": {**ENCODER, "body": "transformer", "heads": 2, "layers": 1},
}
NOUNS = ["dog", "cat", "Paris", "Anna", "tree", "London"]
VERBS = ["sees", "likes", "finds"]


def _sentence(rng: np.random.Generator) -> tuple[list[str], list[str], list[int], list[str]]:
    """A toy sentence: (det) noun verb (det) noun (.) with its entity tags, heads and
    relations (the verb is the root)."""
    words: list[str] = []
    heads: list[int] = []
    rels: list[str] = []
    tags: list[str] = []

    def noun_phrase(role: str) -> None:
        noun = str(rng.choice(NOUNS))
        if noun[0].islower():
            words.append(str(rng.choice(["the", "a"])))
            heads.append(-(len(words) + 1) - 1)  # the noun after it: -(position) - 1
            rels.append("det")
            tags.append("O")
        words.append(noun)
        heads.append(-1)  # the verb, fixed below
        rels.append(role)
        tags.append("O" if noun[0].islower() else ("B-LOC" if noun in NOUNS[2::3] else "B-PER"))

    noun_phrase("nsubj")
    words.append(str(rng.choice(VERBS)))
    verb = len(words)
    heads.append(0)
    rels.append("root")
    tags.append("O")
    noun_phrase("obj")
    if rng.random() < 0.5:
        words.append(".")
        heads.append(-1)
        rels.append("punct")
        tags.append("O")
    fixed = [verb if h == -1 else (-h - 1 if h < -1 else h) for h in heads]
    return words, tags, fixed, rels


def _column(cells: list[Any]) -> np.ndarray:
    out = np.empty(len(cells), dtype=object)
    out[:] = cells
    return out


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [_sentence(rng) for _ in range(n)]
    return pd.DataFrame(
        {
            "form": _column([r[0] for r in rows]),
            "ner": _column([r[1] for r in rows]),
            "head": _column([r[2] for r in rows]),
            "deprel": _column([r[3] for r in rows]),
            "has_period": ["yes" if r[0][-1] == "." else "no" for r in rows],
        }
    )


def _tasks() -> list[polytask.Task]:
    return [
        polytask.Task("ner", "token_classification", "ner"),
        polytask.Task("dep", "dependency", ["head", "deprel"]),
        polytask.Task("period", "binary", "has_period", positive="yes"),
    ]


def _fresh_rows() -> pd.DataFrame:
    """New sentences and awkward ones: unknown words (and characters), a missing sentence,
    an empty one, a one-word one, a whitespace-separated string."""
    rows = _frame(12, seed=7)[["form"]].copy()
    rows.loc[1, "form"] = None
    rows.loc[2, "form"] = []
    rows.loc[3, "form"] = ["Zürich"]
    rows.loc[4, "form"] = "Anna sees the quokka in Zürich today ."
    rows.index = pd.RangeIndex(100, 112)
    return rows


@pytest.fixture(scope="module", params=list(BODIES))
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[polytask.Predictor, Path, str]:
    body = str(request.param)
    root = tmp_path_factory.mktemp(f"export_tokens_{body}")
    polytask.fit(
        _frame(48, seed=0),
        _tasks(),
        out=root / "run",
        baselines=False,
        data_options={"input": {**TOKENS_INPUT, "max_words": 16}},
        model={"encoder": BODIES[body], "head": {"widths": [8]}},
        train={"epochs": 1, "batch_size": 16, "progress": False},
        quiet=True,
    )
    # auto: a BiLSTM goes straight to TorchScript (one ONNX LSTM node, a dynamic length),
    # the Transformer through dynamo (TorchScript would fix its attention's batch size).
    path = export_onnx(root / "run" / "model", root / "model.onnx")
    return polytask.load(root / "run" / "model"), path, body


def test_bilstm_export_form_equals_the_packed_one() -> None:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(7, 5, num_layers=3, batch_first=True, bidirectional=True).eval()
    g = torch.Generator().manual_seed(1)
    for width in (1, 6, 11):
        lengths = torch.randint(0, width + 1, (9,), generator=g)
        lengths[0] = width
        x = torch.randn(9, width, 7, generator=g)
        with torch.no_grad():
            packed = pack_padded_sequence(
                x, lengths.clamp(min=1), batch_first=True, enforce_sorted=False
            )
            expected, _ = pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=width)
            got = bilstm_padded(lstm, x, lengths)
        real = torch.arange(width) < lengths.unsqueeze(1)
        assert got.shape == expected.shape == (9, width, 10)
        torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="bidirectional"):
        bilstm_padded(torch.nn.LSTM(3, 2, batch_first=True), torch.zeros(1, 2, 3), lengths[:1])


def _raw_torch(predictor: polytask.Predictor, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    encoded = predictor.preprocessor.transform(rows, "rows")
    with torch.no_grad():
        out = predictor.model.eval()(encoded)
    return {k: v.numpy() for k, v in out.items()}


def test_onnxruntime_equals_the_torch_network(
    exported: tuple[polytask.Predictor, Path, str],
) -> None:
    predictor, path, body = exported
    rows = _fresh_rows()
    raw = _raw_torch(predictor, rows)
    runtime = OnnxPredictor(path)
    names = [o.name for o in runtime.session.get_outputs()]
    got = dict(zip(names, runtime.session.run(names, runtime.feeds(rows)), strict=True))
    meta = runtime.session.get_modelmeta().custom_metadata_map
    assert meta["polytask.exporter"] == {"bilstm": "torchscript", "transformer": "dynamo"}[body]
    t = raw["ner"].shape[1]
    assert t == 8  # the longest sentence: the runtime feeds the trimmed width, as torch runs
    lengths = np.array([len(w) for w in predictor.preprocessor.sentences(rows, "rows")])
    # The tagger: probabilities of the raw logits, -1 / NaN past each sentence's end.
    proba = torch.softmax(torch.from_numpy(raw["ner"]), -1).double().numpy()
    inside = np.arange(t) < lengths[:, None]
    np.testing.assert_allclose(got["ner_proba"][inside], proba[inside], atol=RAW_TOL, rtol=0)
    assert np.isnan(got["ner_proba"][~inside]).all()
    assert (got["ner_index"][~inside] == -1).all() and (got["ner"][~inside] == "").all()
    assert got["ner_lengths"].tolist() == lengths.tolist()
    ids = repair_bio(raw["ner"].argmax(-1))
    assert (got["ner_index"][inside] == ids[inside]).all()
    # The parser: the raw scores, and the arc and relation scores a decoder reads.
    np.testing.assert_allclose(got["dep_scores"], raw["dep"], atol=RAW_TOL, rtol=0)
    assert got["dep_lengths"].tolist() == lengths.tolist()
    parts = Scores.of(torch.from_numpy(raw["dep"]))
    arcs = parts.arcs.masked_fill(~parts.allowed(), -torch.inf).numpy()
    assert np.array_equal(np.isinf(got["dep_arcs"]), np.isinf(arcs))
    finite = np.isfinite(arcs)
    np.testing.assert_allclose(got["dep_arcs"][finite], arcs[finite], atol=RAW_TOL, rtol=0)
    np.testing.assert_allclose(
        got["dep_relations"], parts.all_labels().numpy(), atol=RAW_TOL, rtol=0
    )
    # Another runtime's decoding from the documented outputs: the torch predictor's trees.
    expected = predictor.predict(rows)
    classes = np.array(predictor.tasks[1].classes, dtype=object)
    for b, n in enumerate(lengths.tolist()):
        if n == 0:
            assert expected["dep.head"].iloc[b] == []
            continue
        s = np.zeros((n + 1, n + 1))
        s[1:] = got["dep_arcs"][b, :n, : n + 1]
        heads = decode_tree(s)
        rels = classes[got["dep_relations"][b, np.arange(n), heads].argmax(-1)].tolist()
        assert heads.tolist() == expected["dep.head"].iloc[b]
        assert rels == expected["dep.deprel"].iloc[b]
    # The sentence-level task reads the pooled words, as on any other input.
    p = 1 / (1 + np.exp(-raw["period"].astype(np.float64)))
    np.testing.assert_allclose(got["period_proba"], p, atol=RAW_TOL, rtol=0)


def test_predict_columns_equal_the_torch_predictor(
    exported: tuple[polytask.Predictor, Path, str],
) -> None:
    predictor, path, _ = exported
    runtime = OnnxPredictor(path)
    for rows in (_fresh_rows(), _fresh_rows().iloc[[3]], _fresh_rows().iloc[[1, 2]]):
        expected, got = predictor.predict(rows), runtime.predict(rows)
        diffs = compare_predictions(expected, got)
        assert diffs and all(d.within(1e-5, 1e-5) for d in diffs), diffs
        assert list(got.columns) == ["ner", "dep.head", "dep.deprel", "period", "period_proba"]
    got = runtime.predict(_fresh_rows())
    assert got["ner"].iloc[1] == [] and got["dep.head"].iloc[2] == []
    assert len(got["ner"].iloc[4]) == 8 and len(got["dep.head"].iloc[4]) == 8
    assert all(sorted(h).count(0) == 1 for h in got["dep.head"] if h)  # one root each

    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    described = json.loads(meta["polytask.input_processor"])
    assert described["name"] == "tokens" and described["columns"] == ["form"]
    assert described["pad_id"] == 0 and described["unknown_id"] == 1
    shapes = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in onnx.load(path).graph.input
    }
    assert shapes == {
        "words": ["batch", "words"],
        "chars": ["batch", "words", 20],
        "lengths": ["batch"],
    }
    outputs = json.loads(meta["polytask.outputs"])
    assert {"ner", "ner_proba", "dep_arcs", "dep_relations", "period"} <= set(outputs)


def test_a_cell_that_is_not_words_is_one_line_naming_column_and_row(
    exported: tuple[polytask.Predictor, Path, str],
) -> None:
    _, path, _ = exported
    rows = _fresh_rows()
    rows.loc[105, "form"] = 3.5
    with pytest.raises(DataError, match=r"column 'form' row 105: expected a list of strings") as e:
        OnnxPredictor(path).predict(rows)
    assert "\n" not in str(e.value)


def test_a_wider_padded_input_gives_the_same_words(
    exported: tuple[polytask.Predictor, Path, str],
) -> None:
    """The graph masks padding: the same rows padded to a wider sentence axis give the same
    outputs at every word (the runtime trims; a client need not)."""
    _, path, _ = exported
    runtime = OnnxPredictor(path)
    feeds = runtime.feeds(_fresh_rows())
    wide = {
        "words": np.pad(feeds["words"], ((0, 0), (0, 5))),
        "chars": np.pad(feeds["chars"], ((0, 0), (0, 5), (0, 0))),
        "lengths": feeds["lengths"],
    }
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = ["ner_index", "dep_arcs", "period_proba"]
    narrow, wider = session.run(names, feeds), session.run(names, wide)
    t = feeds["words"].shape[1]
    assert wider[0].shape[1] == t + 5 and (wider[0][:, t:] == -1).all()
    assert np.array_equal(narrow[0], wider[0][:, :t])
    np.testing.assert_allclose(narrow[1], wider[1][:, :t, : t + 1], atol=RAW_TOL, rtol=0)
    np.testing.assert_allclose(narrow[2], wider[2], atol=RAW_TOL, rtol=0)


def test_dynamo_is_refused_for_a_bilstm_in_one_line(
    exported: tuple[polytask.Predictor, Path, str], tmp_path: Path
) -> None:
    predictor, _, body = exported
    if body != "bilstm":
        pytest.skip("the Transformer exports through dynamo")
    with pytest.raises(PolytaskError, match="dynamo exporter unrolls an LSTM") as e:
        export_onnx(predictor, tmp_path / "m.onnx", exporter="dynamo")
    assert "\n" not in str(e.value) and not (tmp_path / "m.onnx").exists()
