"""Word-level tasks on a pretrained Hugging Face encoder (issue 22): the ``hf_words`` input
(sentences of words tokenised into sub-words, each keeping its word's index; truncation counted)
and the ``hf_words`` encoder (sub-word states pooled to words, first or mean, under the sequence
contract), checked by hand on a tiny random BERT saved with ``save_pretrained``; a tagger and a
parser trained end to end on a generated treebank; save/load; one-line errors."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import polytask
from conftest import save_tiny_bert
from generated_treebank import write_conllu
from polytask.config import config_from_dict
from polytask.data.conllu import read_conllu
from polytask.data.inputs.base import build_input, input_from_dict
from polytask.data.inputs.hf_words import NO_WORD, HfWordsInput
from polytask.errors import ConfigError, DataError
from polytask.models.encoders import ENCODERS
from polytask.models.hf_words import HfWordsEncoder, pool_words
from polytask.train.freeze import layer_groups

pytest.importorskip("transformers")

# Tiny models: on 2 shared cores, intra-op threads wait for each other more than they compute.
pytestmark = pytest.mark.usefixtures("torch_single_thread")

SOURCE = "toy"
# Word pieces: "walks" is walk + ##s, "running" run + ##ning, numbers are digit pieces.
PIECES = [
    *[
        "the",
        "a",
        "every",
        "this",
        "cat",
        "dog",
        "man",
        "park",
        "ball",
        "girl",
        "tree",
        "car",
        "big",
        "red",
        "old",
        "small",
        ".",
        "run",
    ],
    *["walk", "see", "like", "kick", "find", "##s", "##ning", "##ing"],
    *[str(d) for d in range(10)],
    *[f"##{d}" for d in range(10)],
]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bert") / "tiny"
    save_tiny_bert(directory, PIECES, layers=2, max_positions=24)
    return directory


def _column(cells: list[object]) -> np.ndarray:
    column = np.empty(len(cells), dtype=object)
    column[:] = cells
    return column


def _input(bert_dir: Path, **params: object) -> HfWordsInput:
    processor = build_input("hf_words", {"path": str(bert_dir), **params})
    assert isinstance(processor, HfWordsInput)
    return processor


def _encoder(processor: HfWordsInput, bert_dir: Path, **params: object) -> HfWordsEncoder:
    given = {"path": str(bert_dir), "dropout": 0.0, **params}
    encoder = ENCODERS.get("hf_words").factory(
        processor.input_spec, ENCODERS.validate_params("hf_words", given, "model.encoder")
    )
    assert isinstance(encoder, HfWordsEncoder)
    return encoder.eval()


# -- the input: sub-words and their words ---------------------------------------------------
def test_words_are_split_into_sub_words_that_keep_their_word(bert_dir: Path) -> None:
    p = _input(bert_dir)
    vocab = p.tokenizer.get_vocab()
    cls, sep, pad = vocab["[CLS]"], vocab["[SEP]"], vocab["[PAD]"]
    frame = pd.DataFrame(
        {"form": _column([["the", "walks", "running", "."], "cat walking 42", None])}
    )
    out = p.transform(frame, SOURCE)
    ids = [vocab[w] for w in ["the", "walk", "##s", "run", "##ning", "."]]
    assert out["tokens"][0].tolist() == [cls, *ids, sep]  # the longest: 8 sub-words
    assert out["word_index"][0].tolist() == [NO_WORD, 0, 1, 1, 2, 2, 3, NO_WORD]
    ids = [vocab[w] for w in ["cat", "walk", "##ing", "4", "##2"]]
    assert out["tokens"][1].tolist() == [cls, *ids, sep, pad]
    assert out["word_index"][1].tolist() == [NO_WORD, 0, 1, 1, 2, 2, NO_WORD, NO_WORD]
    assert out["tokens"][2].tolist() == [pad] * 8  # a missing sentence: no sub-words at all
    assert out["word_index"][2].tolist() == [NO_WORD] * 8
    assert out["lengths"].tolist() == [4, 3, 0]
    # The model's position table (24) is the default limit; nothing is fitted or stored.
    assert p.input_spec.kind == "subwords" and p.input_spec.shape == [24]
    again = input_from_dict(p.to_dict())
    assert torch.equal(again.transform(frame, SOURCE)["word_index"], out["word_index"])


def test_a_long_sentence_is_cut_with_a_count_and_its_lost_words_get_a_vector(
    bert_dir: Path,
) -> None:
    p = _input(bert_dir, max_tokens=8)
    frame = pd.DataFrame({"form": _column([["walks"] * 5, ["cat", "dog"]])})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = p.transform(frame, SOURCE)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    # 5 words x 2 pieces + [CLS] + [SEP] = 12 > 8: [CLS], 3 whole words, [SEP] are kept.
    assert messages == [
        "toy: column 'form': 1 of 2 sentences have more than data.input.max_tokens = 8 "
        "sub-words and are cut; their last 2 words get no context (a learned vector instead)"
    ]
    assert out["word_index"][0].tolist() == [NO_WORD, 0, 0, 1, 1, 2, 2, NO_WORD]
    assert out["lengths"].tolist() == [5, 2]
    encoder = _encoder(p, bert_dir)
    z = encoder(out)
    assert z.shape == (2, 5, 32)
    # The two cut words read the learned vector; the second sentence is zero past 2 words.
    assert torch.equal(z[0, 3], encoder.uncovered.vector.detach())
    assert torch.equal(z[0, 4], z[0, 3])
    assert not torch.equal(z[0, 2], z[0, 3])
    assert (z[1, 2:] == 0).all() and (z[1, :2] != 0).any(dim=-1).all()


# -- the encoder: pooling by hand -----------------------------------------------------------
def test_pool_words_first_and_mean_equal_a_loop_by_hand() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(2, 7, 3)
    word_index = torch.tensor(
        [[NO_WORD, 0, 1, 1, 1, 2, NO_WORD], [NO_WORD, 0, 0, 2, NO_WORD, NO_WORD, NO_WORD]]
    )
    first, covered = pool_words(hidden, word_index, 4, "first")
    mean, _ = pool_words(hidden, word_index, 4, "mean")
    assert covered.tolist() == [[True, True, True, False], [True, False, True, False]]
    for b in range(2):
        for w in range(4):
            where = [i for i in range(7) if int(word_index[b, i]) == w]
            if not where:
                assert (first[b, w] == 0).all() and (mean[b, w] == 0).all()
                continue
            assert torch.equal(first[b, w], hidden[b, where[0]])
            assert torch.allclose(mean[b, w], hidden[b, where].mean(dim=0), atol=1e-6)
    # Sentence 0, word 1 has three pieces: positions 2, 3, 4.
    assert torch.allclose(mean[0, 1], (hidden[0, 2] + hidden[0, 3] + hidden[0, 4]) / 3)


@pytest.mark.parametrize("pooling", ["first", "mean"])
def test_encoder_pools_the_body_states_and_zeroes_padding(bert_dir: Path, pooling: str) -> None:
    p = _input(bert_dir)
    frame = pd.DataFrame({"form": _column([["the", "walks", "running"], ["dog"], []])})
    inputs = p.transform(frame, SOURCE)
    encoder = _encoder(p, bert_dir, pooling=pooling)
    with torch.no_grad():
        z = encoder(inputs)
        ids = inputs["tokens"][:, :7]  # the batch's longest sentence: [CLS] + 5 pieces + [SEP]
        hidden = encoder.body(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
    assert z.shape == (3, 3, 32) and encoder.sequence
    pieces = {0: [1], 1: [2, 3], 2: [4, 5]}  # sentence 0: the / walk ##s / run ##ning
    for w, where in pieces.items():
        expected = hidden[0, where[0]] if pooling == "first" else hidden[0, where].mean(dim=0)
        assert torch.allclose(z[0, w], expected, atol=1e-5)
    assert torch.allclose(z[1, 0], hidden[1, 1], atol=1e-5)
    assert (z[1, 1:] == 0).all() and (z[2] == 0).all()  # padding words are exact zeros


def test_train_layers_freezes_the_embeddings_and_lower_layers(bert_dir: Path) -> None:
    encoder = _encoder(_input(bert_dir), bert_dir, train_layers=1)
    body: Any = encoder.body  # a transformers BertModel: its submodules are untyped
    assert not any(q.requires_grad for q in body.embeddings.parameters())
    layers = body.encoder.layer
    assert not any(q.requires_grad for q in layers[0].parameters())
    assert all(q.requires_grad for q in layers[1].parameters())
    assert encoder.uncovered.vector.requires_grad


# -- one-line errors ------------------------------------------------------------------------
def test_bad_inputs_are_one_line_errors_naming_the_column_or_key(
    bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = _input(bert_dir)
    with pytest.raises(DataError, match=r"toy: column 'form' row 1: expected a list") as info:
        p.transform(pd.DataFrame({"form": _column([["the"], 5])}), SOURCE)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=r"column 'form' row 0: word 2 is int"):
        p.transform(pd.DataFrame({"form": _column([["the", 3]])}), SOURCE)
    with pytest.raises(DataError, match="column 'words' not found"):
        _input(bert_dir, column="words").fit(pd.DataFrame({"form": ["the"]}), SOURCE, None)
    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(ConfigError, match=r"data\.input\.path: .*has no config\.json") as error:
        _input(tmp_path / "not_a_model")
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"data\.input\.max_tokens: 40 sub-words.* at most 24"):
        _input(bert_dir, max_tokens=40)
    with pytest.raises(ConfigError, match=r"encoder 'hf_words' reads subwords inputs"):
        text = build_input("hf_tokens", {"path": str(bert_dir), "max_tokens": 16})
        ENCODERS.get("hf_words").factory(
            text.input_spec,
            ENCODERS.validate_params("hf_words", {"path": str(bert_dir)}, "model.encoder"),
        )

    class Slow:
        is_fast = False

    monkeypatch.setattr("polytask.data.inputs.hf_words.hf_tokenizer", lambda _: Slow())
    with pytest.raises(ConfigError, match=r"data\.input\.path: .*slow \(Slow\).*fast tokenizer"):
        _input(bert_dir)


# -- end to end: a tagger and a parser on a generated treebank --------------------------------


@pytest.fixture(scope="module")
def tagger_run(
    tmp_path_factory: pytest.TempPathFactory, bert_dir: Path
) -> tuple[Path, polytask.RunResult]:
    folder = tmp_path_factory.mktemp("hf_tagger")
    for name, n, seed in (("train", 160, 0), ("dev", 40, 1), ("test", 60, 2)):
        write_conllu(folder / f"{name}.conllu", n, seed, max_number=999, text=False)
    raw = {
        "seed": 0,
        "baselines": False,
        "data": {
            "path": "train.conllu",
            "features": ["form"],
            "input": {"name": "hf_words", "path": str(bert_dir)},
            "split": {"method": "files", "val_path": "dev.conllu", "test_path": "test.conllu"},
        },
        "tasks": [
            {"name": "upos", "kind": "token_classification", "target": "upos"},
            {"name": "dep", "kind": "dependency", "target": ["head", "deprel"]},
        ],
        "model": {
            "encoder": {"name": "hf_words", "path": str(bert_dir), "pooling": "first"},
            "head": {"widths": []},
        },
        "train": {"epochs": 6, "batch_size": 16, "lr": 3e-3, "progress": False},
        # Layer-wise learning rates through the existing [finetune] keys (ULMFiT's decay).
        "finetune": {"freeze": "none", "layer_lr_decay": 0.8},
    }
    cfg = config_from_dict(raw, base_dir=folder)
    return folder, polytask.run(cfg, out=folder / "run", quiet=True)


def test_a_tiny_bert_learns_to_tag_and_parse_a_generated_treebank(
    tagger_run: tuple[Path, polytask.RunResult],
) -> None:
    _, result = tagger_run
    # 60 test sentences of about 8 words; a majority tagger scores about 0.35, and "walks"
    # (two pieces) is right only from its context.
    assert result.metrics["upos"]["accuracy"] >= 0.97, result.metrics
    assert result.metrics["dep"]["las"] >= 0.9, result.metrics


def test_the_body_is_cut_into_embeddings_and_layers_for_finetune(
    tagger_run: tuple[Path, polytask.RunResult],
) -> None:
    _, result = tagger_run
    groups = layer_groups(result.predictor.model)
    names = [g.name for g in groups]
    assert names == [
        "architecture.encoder.backbone.embeddings.word_embeddings",
        "architecture.encoder.backbone.encoder.layer.0",
        "architecture.encoder.backbone.encoder.layer.1",
    ]
    # The learned vector of words without sub-words trains with the top layer.
    assert "architecture.encoder.uncovered.vector" in groups[2].parameters
    assert len(groups[0].parameters) == 5  # word, position, segment tables and LayerNorm


def test_a_saved_model_predicts_the_same_after_loading(
    tagger_run: tuple[Path, polytask.RunResult],
) -> None:
    folder, result = tagger_run
    test = read_conllu(folder / "test.conllu")
    loaded = polytask.load(folder / "run" / "model")
    before = result.predictor.predict(test)
    after = loaded.predict(test)
    assert before["upos"].tolist() == after["upos"].tolist()
    assert before["dep.head"].tolist() == after["dep.head"].tolist()
    assert before["dep.deprel"].tolist() == after["dep.deprel"].tolist()
    assert loaded.evaluate(test)["upos"]["accuracy"] == pytest.approx(
        result.metrics["upos"]["accuracy"], abs=1e-6
    )
    fresh = pd.DataFrame({"form": ["the dog walks a big cat 123 .", None]})
    tags = loaded.predict(fresh)["upos"].tolist()
    assert len(tags[0]) == 8 and tags[1] == []


def test_export_is_refused_in_one_line(
    tagger_run: tuple[Path, polytask.RunResult], tmp_path: Path
) -> None:
    from polytask.errors import PolytaskError
    from polytask.export.onnx_export import export_onnx

    folder, _ = tagger_run
    with pytest.raises(PolytaskError, match=r"data.input 'hf_words'.*torch runtime") as info:
        export_onnx(folder / "run" / "model", tmp_path / "m.onnx")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "m.onnx").exists()
