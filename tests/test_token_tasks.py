"""Token-level language tasks (issue 22): the ``tokens`` input, the ``tokens`` encoder and its
sequence contract (trimmed, zero padding, pooled sentence heads), the ``token_classification``
kind (tag sets, ``_``, BIO spans and their F1), and a generated treebank learnt end to end
from a .conllu file: train, evaluate, save, load, predict, export refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import polytask
from conftest import run_cli
from generated_treebank import write_conllu
from polytask.config import config_from_dict
from polytask.data.conllu import read_conllu
from polytask.data.inputs.base import build_input, input_from_dict
from polytask.data.inputs.tokens import TokensInput
from polytask.data.spec import InputSpec
from polytask.data.targets import encode_targets, fit_task
from polytask.errors import ConfigError, DataError
from polytask.evaluate.evaluation import predict_outputs
from polytask.evaluate.metrics import compute_metrics
from polytask.losses import TaskLoss
from polytask.models.architectures import HardSharing
from polytask.models.config import ModelConfig
from polytask.models.heads import masked_mean_words
from polytask.models.model import MultiTaskModel, build_model
from polytask.tasks import Task
from polytask.tasks.kinds.token_classification import repair_bio, span_counts
from polytask.tasks.kinds.tokens import encode_list_column, fit_length, pad_lists, pad_rows

SOURCE = "toy"

# Small models: on 2 shared cores, two intra-op threads wait for each other more than they
# compute.
pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _column(cells: list[object]) -> np.ndarray:
    column = np.empty(len(cells), dtype=object)
    column[:] = cells
    return column


def _tokens(**params: object) -> TokensInput:
    processor = build_input("tokens", dict(params))
    assert isinstance(processor, TokensInput)
    return processor


SMALL_ENCODER = {
    "name": "tokens",
    "word_dim": 16,
    "char_dim": 8,
    "char_filters": 8,
    "width": 16,
    "layers": 1,
    "dropout": 0.0,
}


# -- the tokens input -----------------------------------------------------------------------
def test_tokens_input_encodes_words_characters_and_lengths() -> None:
    train = pd.DataFrame(
        {"form": _column([["The", "cat", "sat"], ["the", "dog"], "The cat  ran", None])}
    )
    p = _tokens(min_frequency=2, max_word_chars=4)
    p.fit(train, SOURCE, None)
    # Lower-cased counts: the x3, cat x2; every other word once (unknown at min_frequency 2).
    assert p.vocabulary == ["the", "cat"]
    out = p.transform(
        pd.DataFrame({"form": _column([["THE", "Cats", "sat"], "cat", None])}), SOURCE
    )
    assert out["lengths"].tolist() == [3, 1, 0]
    assert out["words"].tolist() == [[2, 1, 1], [3, 0, 0], [0, 0, 0]]  # "cats" is unknown
    assert out["chars"].dtype == torch.int16 and out["chars"].shape == (3, 3, 4)
    ids = {c: i for i, c in enumerate(p.characters, start=2)}
    # "Cats" fits in 4 characters; characters keep case and no "C" was seen: id 1.
    assert out["chars"][0, 1].tolist() == [1, ids["a"], ids["t"], ids["s"]]
    assert out["chars"][1, 1].tolist() == [0, 0, 0, 0]
    spec = p.input_spec
    assert (spec.kind, spec.shape, spec.vocab_size) == ("tokens", [4], 4)
    assert spec.char_vocab_size == 2 + len(p.characters)


def test_long_words_keep_their_first_and_last_characters() -> None:
    p = _tokens(max_word_chars=5)
    p.fit(pd.DataFrame({"form": _column([["unbelievably"]])}), SOURCE, None)
    chars = p.transform(pd.DataFrame({"form": _column([["unbelievably"]])}), SOURCE)["chars"]
    back = "".join(p.characters[i - 2] for i in chars[0, 0].tolist())
    assert back == "unbly"  # "unb" + "ly": prefix and suffix


def test_tokens_input_round_trips_through_json() -> None:
    table = pd.DataFrame({"form": _column([["A", "b", "b"], ["c", "A", "é"]])})
    p = _tokens(min_frequency=1, lowercase=False)
    p.fit(table, SOURCE, None)
    again = input_from_dict(json.loads(json.dumps(p.to_dict())))
    assert isinstance(again, TokensInput) and again.vocabulary == p.vocabulary
    for key, value in p.transform(table, SOURCE).items():
        torch.testing.assert_close(again.transform(table, SOURCE)[key], value)


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        (3.5, r"column 'form' row 7: expected a list of strings .* got float"),
        (["ok", 4], r"column 'form' row 7: word 2 is int '4'; expected a list of strings"),
    ],
)
def test_a_cell_that_is_not_words_is_one_line_naming_column_and_row(
    cell: object, message: str
) -> None:
    table = pd.DataFrame({"form": _column([["fine"], cell])}, index=[3, 7])
    p = _tokens()
    with pytest.raises(DataError, match=message) as info:
        p.fit(table, SOURCE, None)
    assert "\n" not in str(info.value)


def test_a_sentence_longer_than_max_words_is_refused() -> None:
    p = _tokens(max_words=3)
    with pytest.raises(DataError, match=r"row 0 has 4 words; at most data.input.max_words = 3"):
        p.fit(pd.DataFrame({"form": ["a b c d"]}), SOURCE, None)


# -- the shared helpers of the token contract ------------------------------------------------
def test_list_helpers_pad_mask_and_fit_lengths() -> None:
    values, mask = pad_lists([[1, 2, 3], None, [4]])
    assert values.tolist() == [[1, 2, 3], [0, 0, 0], [4, 0, 0]]
    assert mask.tolist() == [[True] * 3, [False] * 3, [True, False, False]]
    assert fit_length(values, 2).tolist() == [[1, 2], [0, 0], [4, 0]]
    assert fit_length(mask, 4, False)[:, 3].tolist() == [False] * 3
    codes, valid = encode_list_column(
        pd.Series(_column([["a", "x"], None]), name="c"),
        SOURCE,
        lambda v, i, j: None if v == "x" else 5,
    )
    assert codes.tolist() == [[5, 0], [0, 0]] and valid.tolist() == [[True, False], [False] * 2]
    with pytest.raises(DataError, match="column 'c' row 0: expected a list of tokens"):
        encode_list_column(pd.Series(["a b"], name="c"), SOURCE, lambda v, i, j: 0)
    joined = pad_rows([torch.ones(1, 2, 3), torch.ones(2, 4, 3)])
    assert joined.shape == (3, 4, 3) and float(joined[0, 2:].abs().sum()) == 0.0


# -- the token encoder ------------------------------------------------------------------------
def _encoder_model(body: str, tasks: list[Task], vocab: int = 12, chars: int = 9) -> MultiTaskModel:
    spec = InputSpec(kind="tokens", shape=[4], vocab_size=vocab, char_vocab_size=chars)
    cfg = ModelConfig.model_validate(
        {"encoder": {**SMALL_ENCODER, "body": body, "heads": 2}, "head": {"widths": [8]}}
    )
    return build_model(tasks, spec, cfg, seed=0).eval()


def _batch(lengths: list[int], width: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = len(lengths)
    words = torch.randint(1, 12, (n, width), generator=g)
    chars = torch.randint(1, 9, (n, width, 4), generator=g).to(torch.int16)
    real = torch.arange(width) < torch.tensor(lengths).unsqueeze(1)
    return {
        "words": words * real,
        "chars": chars * real.unsqueeze(-1),
        "lengths": torch.tensor(lengths),
    }


@pytest.mark.parametrize("body", ["bilstm", "transformer"])
def test_encoder_trims_to_the_batch_and_zeroes_padding(body: str) -> None:
    tagger = Task("tag", "token_classification", "tags", classes=["a", "b", "c"])
    model = _encoder_model(body, [tagger])
    assert isinstance(model.architecture, HardSharing) and model.architecture.encoder.sequence
    inputs = _batch([3, 1, 0])
    with torch.no_grad():
        z = model.represent(inputs)
        logits = model(inputs)["tag"]
    assert z.shape == (3, 3, 16)  # trimmed to the longest sentence of the batch, not 6
    real = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    assert bool((z[~real] == 0).all()) and bool((z[real] != 0).any(dim=-1).all())
    assert logits.shape == (3, 3, 3) and bool((logits[~real] == 0).all())
    # A sentence's vectors do not depend on the padding or the other sentences of its batch.
    with torch.no_grad():
        alone = model.represent({k: v[1:2] for k, v in inputs.items()})
    torch.testing.assert_close(alone[0, :1], z[1, :1], atol=1e-5, rtol=1e-5)


def test_sentence_level_heads_pool_the_words_only() -> None:
    z = torch.tensor([[[1.0, 3.0], [3.0, -1.0], [0.0, 0.0]], [[2.0, 2.0], [0.0, 0.0], [0, 0]]])
    torch.testing.assert_close(masked_mean_words(z), torch.tensor([[2.0, 1.0], [2.0, 2.0]]))
    assert masked_mean_words(torch.zeros(1, 2, 3)).tolist() == [[0.0, 0.0, 0.0]]
    # A sentence-level task on the sequence encoder: the same sentence scores the same alone
    # and padded to a longer batch (the padding positions count for nothing).
    binary = Task("long", "binary", "y", classes=["no", "yes"])
    model = _encoder_model("bilstm", [binary])
    inputs = _batch([2, 5], width=6)
    with torch.no_grad():
        both = model(inputs)["long"]
        first = {"words": inputs["words"][:1, :2], "chars": inputs["chars"][:1, :2]}
        alone = model({**first, "lengths": inputs["lengths"][:1]})["long"]
    assert both.shape == (2,)
    torch.testing.assert_close(alone, both[:1], atol=1e-5, rtol=1e-5)


def test_token_tasks_need_a_sequence_encoder() -> None:
    tagger = Task("tag", "token_classification", "tags", classes=["a", "b"])
    cfg = ModelConfig.model_validate({"encoder": {"name": "mlp", "widths": [4]}})
    with pytest.raises(ConfigError, match=r"'tag' is token-level .* needs a sequence encoder"):
        build_model([tagger], InputSpec(n_numeric=3), cfg, seed=0)
    bad = ModelConfig.model_validate({"encoder": SMALL_ENCODER, "head": {"norm": "batch"}})
    spec = InputSpec(kind="tokens", shape=[4], vocab_size=5, char_vocab_size=4)
    with pytest.raises(ConfigError, match=r"model\.head\.norm: batch normalisation does not apply"):
        build_model([tagger], spec, bad, seed=0)


@pytest.mark.parametrize("architecture", ["hard", "soft", "mmoe", "ple"])
def test_architectures_on_a_sequence_encoder(architecture: str) -> None:
    tasks = [
        Task("tag", "token_classification", "tags", classes=["a", "b", "c"]),
        Task("long", "binary", "y", classes=["no", "yes"]),
    ]
    spec = InputSpec(kind="tokens", shape=[4], vocab_size=12, char_vocab_size=9)
    cfg = ModelConfig.model_validate(
        {"encoder": SMALL_ENCODER, "architecture": {"name": architecture}}
    )
    if architecture in ("mmoe", "ple"):  # gates mix experts per example, not per word
        with pytest.raises(ConfigError, match=r"gated experts .* a vector per word"):
            build_model(tasks, spec, cfg, seed=0)
        return
    with torch.no_grad():
        out = build_model(tasks, spec, cfg, seed=0).eval()(_batch([3, 1]))
    assert out["tag"].shape == (2, 3, 3) and out["long"].shape == (2,)


def test_outputs_of_batches_of_different_lengths_are_padded_together() -> None:
    tagger = Task("tag", "token_classification", "tags", classes=["a", "b"])
    model = _encoder_model("bilstm", [tagger])
    inputs = _batch([1, 1, 4, 2])
    out = predict_outputs(model, inputs, batch_size=2)["tag"]
    assert out.shape == (4, 4, 2)
    assert bool((out[:2, 1:] == 0).all()) and bool((out[2, :4] != 0).any(dim=-1).all())


# -- the token_classification kind -----------------------------------------------------------
def _fitted(cells: list[object], **kw: object) -> tuple[Task, torch.Tensor, torch.Tensor]:
    table = pd.DataFrame({"tags": _column(cells)})
    task = Task("t", "token_classification", "tags", **kw)  # type: ignore[arg-type]
    task = fit_task(task, table, np.arange(len(table)), SOURCE)
    y, m = encode_targets(task, table, SOURCE)
    return task, y, m


def test_underscore_is_a_label_unless_declared_missing() -> None:
    # CoNLL 2018's UFeats compares FEATS verbatim: "_" (no features) is a class.
    task, y, m = _fitted([["Number=Sing", "_"], ["_", None]])
    assert task.classes == ["Number=Sing", "_"]
    assert y.tolist() == [[0, 1], [1, 0]] and m.tolist() == [[True, True], [True, False]]
    task, y, m = _fitted([["NOUN", "_", "VERB"], ["_", "NOUN"]], missing=["_"])
    assert task.classes == ["NOUN", "VERB"]
    assert m.tolist() == [[True, False, True], [False, True, False]]
    assert y[0].tolist() == [0, 0, 1] and y[1, 2].item() == -1  # -1: past the sentence's end


def test_bad_labels_are_one_line_errors() -> None:
    with pytest.raises(DataError, match=r"labels outside the declared classes \['A', 'B'\]: \['C'"):
        _fitted([["A", "C"], ["B"]], classes=["A", "B"])
    with pytest.raises(DataError, match="has 1 label"):
        _fitted([["_", "_"], ["_"]])
    with pytest.raises(DataError, match=r"span_f1 reads BIO tags .* the label 'NOUN'"):
        _fitted([["NOUN", "VERB"]], metrics=["accuracy", "span_f1"])
    with pytest.raises(DataError, match=r"column 'tags' row 1: expected a list of tokens"):
        _fitted([["A", "B"], "A B"])
    with pytest.raises(ConfigError, match=r"span_f1 reads BIO tags .*; classes hold 'NOUN'"):
        Task("t", "token_classification", "tags", classes=["NOUN", "O"], metrics=["span_f1"])
    with pytest.raises(ConfigError, match="span_f1 reads BIO classes in the order O, B-T1"):
        Task("t", "token_classification", "tags", classes=["B-X", "I-X", "O"], metrics=["span_f1"])


def test_bio_classes_are_ordered_and_invalid_sequences_repaired() -> None:
    task, _, _ = _fitted([["O", "B-PER", "I-PER"], ["I-LOC", "O"]])
    assert task.classes == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    # O I-PER I-PER B-LOC I-PER: the first I-PER starts a span (conlleval), the last too.
    ids = np.array([[0, 4, 4, 1, 4]])
    assert repair_bio(ids).tolist() == [[0, 3, 4, 1, 3]]
    out = torch.nn.functional.one_hot(torch.tensor(ids), 5).float() * 10
    assert task.spec.decode(task, out)["t"][0] == ["O", "B-PER", "I-PER", "B-LOC", "B-PER"]


def test_span_f1_by_hand() -> None:
    # Classes O, B-LOC, I-LOC, B-PER, I-PER (ids 0-4); -1 = no label / padding.
    gold = np.array(
        [
            [3, 4, 0, 1, 2, -1],  # PER[0:2] LOC[3:5]
            [1, 0, 3, 4, 4, 0],  # LOC[0:1] PER[2:5]
        ]
    )
    pred = np.array(
        [
            [3, 4, 0, 1, 0, 2],  # PER[0:2] right, LOC[3:4] wrong end; the last word has no label
            [2, 0, 3, 4, 0, 0],  # I-LOC at the start = LOC[0:1] right; PER[2:4] wrong end
        ]
    )
    tp, predicted, gold_n = span_counts(pred, gold)
    assert (tp, predicted, gold_n) == (2, 4, 4)
    task, _, _ = _fitted(
        [["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]], metrics=["span_f1", "accuracy"]
    )
    logits = torch.nn.functional.one_hot(torch.tensor(pred), 5).float() * 10
    target = torch.tensor(gold).clamp(min=0)
    values = compute_metrics(task, logits, target, torch.tensor(gold) >= 0)
    assert values["span_f1"] == pytest.approx(2 * 2 / (4 + 4))
    # Accuracy over the 11 labelled words: 8 right (the two wrong span ends and one I-LOC).
    assert values["accuracy"] == pytest.approx(8 / 11)


def test_the_loss_reads_targets_longer_than_the_trimmed_output() -> None:
    task, y, m = _fitted([["A", "B", "A", "B"], ["B"]])
    out = torch.randn(2, 4, 2)
    whole = TaskLoss(task)(out, y, m)
    trimmed = TaskLoss(task)(out[1:, :1], y[1:], m[1:])  # a batch of the short sentence only
    assert whole is not None and trimmed is not None
    expected = torch.nn.functional.cross_entropy(out[1, :1], y[1, :1])
    torch.testing.assert_close(trimmed, expected)
    assert math.isfinite(float(whole))


# -- end to end: a generated treebank ---------------------------------------------------------


def _tagger_config(folder: Path, **extra: object) -> dict[str, object]:
    return {
        "seed": 0,
        "baselines": False,
        "data": {
            "path": "train.conllu",
            "features": ["form"],
            "input": {"name": "tokens", "min_frequency": 1},
            "split": {"method": "files", "val_path": "dev.conllu", "test_path": "test.conllu"},
        },
        "tasks": [{"name": "upos", "kind": "token_classification", "target": "upos"}],
        "model": {"encoder": {**SMALL_ENCODER, "width": 32}, "head": {"widths": []}},
        "train": {"epochs": 12, "batch_size": 16, "lr": 1e-2, "progress": False},
        **extra,
    }


@pytest.fixture(scope="module")
def tagger_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, polytask.RunResult]:
    folder = tmp_path_factory.mktemp("tagger")
    for name, n, seed in (("train", 240, 0), ("dev", 60, 1), ("test", 80, 2)):
        write_conllu(folder / f"{name}.conllu", n, seed)
    cfg = config_from_dict(_tagger_config(folder), base_dir=folder)
    result = polytask.run(cfg, out=folder / "run", quiet=True)
    return folder, result


def test_a_generated_treebank_is_tagged_end_to_end(
    tagger_run: tuple[Path, polytask.RunResult],
) -> None:
    folder, result = tagger_run
    # 80 test sentences, about 8 words each; "walks" is right only from its context and
    # numbers only from their characters.
    assert result.metrics["upos"]["accuracy"] >= 0.97, result.metrics
    predictor = polytask.load(folder / "run" / "model")
    test = read_conllu(folder / "test.conllu")
    assert predictor.evaluate(test)["upos"]["accuracy"] == pytest.approx(
        result.metrics["upos"]["accuracy"], abs=1e-6
    )
    fresh = pd.DataFrame(
        {"form": ["the dog walks a big cat 31337 .", "a walks sees the tree .", None]}
    )
    tags = predictor.predict(fresh)["upos"].tolist()
    assert tags[0] == ["DET", "NOUN", "VERB", "DET", "ADJ", "NOUN", "NUM", "PUNCT"]
    assert tags[1] == ["DET", "NOUN", "VERB", "DET", "NOUN", "PUNCT"]
    assert tags[2] == []


def test_a_tagger_exports_to_onnx_with_the_same_tags(
    tagger_run: tuple[Path, polytask.RunResult], tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    from polytask.export import OnnxPredictor, export_onnx

    folder, _ = tagger_run
    path = export_onnx(folder / "run" / "model", tmp_path / "model.onnx")
    fresh = pd.DataFrame({"form": ["the dog walks a big cat 31337 .", None, "a walks ."]})
    expected = polytask.load(folder / "run" / "model").predict(fresh)["upos"].tolist()
    assert OnnxPredictor(path).predict(fresh)["upos"].tolist() == expected
    assert expected[0] == ["DET", "NOUN", "VERB", "DET", "ADJ", "NOUN", "NUM", "PUNCT"]


def test_init_writes_a_tagger_config_for_a_treebank(
    tagger_run: tuple[Path, polytask.RunResult], tmp_path: Path
) -> None:
    folder, _ = tagger_run
    out = tmp_path / "tagger.toml"
    result = run_cli("init", folder / "train.conllu", "--target", "upos", "-o", out)
    assert result.code == 0, result.err
    text = out.read_text()
    assert 'kind = "token_classification"' in text and 'name = "tokens"' in text
    cfg = polytask.load_config(out)
    assert cfg.tasks[0].kind == "token_classification"
    assert (cfg.data.input.name, cfg.model.encoder.name) == ("tokens", "tokens")


@pytest.mark.parametrize("fill_missing", [False, True])
def test_a_tagger_teaches_a_student_per_word(
    tagger_run: tuple[Path, polytask.RunResult], fill_missing: bool
) -> None:
    # Teacher outputs of the whole table are padded to its longest sentence, the student's
    # to each batch's: the per-word units line up, and padding is no unit (fill_missing).
    folder, _ = tagger_run
    teacher = str(folder / "run" / "model")
    distill = {"teachers": [teacher], "fill_missing": fill_missing}
    cfg = config_from_dict(_tagger_config(folder, distill=distill), base_dir=folder)
    student = polytask.run(cfg, quiet=True)
    assert student.metrics["upos"]["accuracy"] >= 0.95, student.metrics


def test_a_tagger_is_served_over_http(tagger_run: tuple[Path, polytask.RunResult]) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polytask.serve.app import create_app

    folder, _ = tagger_run
    with TestClient(create_app(folder / "run" / "model")) as client:
        sentences = [
            {"form": ["the", "dog", "walks", "a", "cat", "."]},
            {"form": "a walks sees the tree ."},
        ]
        answer = client.post("/predict", json={"records": sentences})
        assert answer.status_code == 200, answer.text
        tags = [row["upos"] for row in answer.json()["predictions"]]
        assert tags == [
            ["DET", "NOUN", "VERB", "DET", "NOUN", "PUNCT"],
            ["DET", "NOUN", "VERB", "DET", "NOUN", "PUNCT"],
        ]
        bad = client.post("/predict", json={"records": [{"form": 3}]})
        assert bad.status_code == 422 and bad.json()["field"].startswith("records[0].form")
