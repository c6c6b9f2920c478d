"""``token_classification``: a label per word of a sentence (POS tags, morphology, named
entities); ``[B, T', C]`` logits.

**Targets.** A list column (one list of labels per sentence, as ``data.format = "conllu"``
gives its ``upos``, ``xpos``, ``feats`` columns), encoded as ``[N, T]`` class indices and a
mask (the contract of :mod:`polytask.tasks.kinds.tokens`). A ``None`` entry, an entry among the
task's ``missing`` labels, a missing sentence and every position past a sentence's end are
masked. CoNLL-U's ``_`` is a label like any other, as the CoNLL 2018 shared task's evaluation
compares the fields verbatim: for FEATS it means "no features", which the whole-string "UFeats"
accuracy counts (Zeman et al., "CoNLL 2018 Shared Task: Multilingual Parsing from Raw Text to
Universal Dependencies", 2018). A treebank whose XPOS is ``_`` throughout has one class and is
refused; declare ``missing = ["_"]`` to mask ``_`` instead.

**Classes** are the labels of the whole table, sorted (at least two in the training rows), or
the declared ``classes``. When every label is ``O`` or ``B-TYPE`` / ``I-TYPE`` the task is a BIO
span task (named entities) and the classes are put in the order the span metric reads:
``O, B-T1, I-T1, B-T2, I-T2, ...`` (types sorted; a type's missing ``B-``/``I-`` partner is
added).

**Loss**: cross-entropy over the valid words (class-weighted as ``nn.CrossEntropyLoss``).
**Metrics**: ``accuracy``, micro over the valid words (torchmetrics ``MulticlassAccuracy``);
``span_f1`` (BIO tasks, declared in ``metrics``): exact-match span F1 over the split, the
CoNLL-2003 convention (Tjong Kim Sang & De Meulder, 2003) with ``conlleval``'s reading of
invalid sequences: an ``I-X`` after ``O`` or after another type starts a span.

**Predictions**: one list of labels per sentence (``None`` for a sentence whose logits are not
finite); BIO predictions are repaired the same way (``I-X`` starting a span becomes ``B-X``).
The output holds exact zeros past each sentence's end (the token head keeps the encoder's zero
padding, :class:`TokenHead`), which is how decoding knows each sentence's length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.errors import ConfigError, DataError
from polytask.tasks.kinds.base import (
    ClassIndexed,
    LoadArrays,
    LossState,
    MetricFactory,
    TaskLike,
    count_score_metric,
    softmax_teacher_units,
    torchmetric,
)
from polytask.tasks.kinds.tokens import (
    encode_list_column,
    fit_targets,
    list_column,
    sentence_lengths,
)

if TYPE_CHECKING:
    from torchmetrics import Metric

#: The label outside every span in BIO tagging.
OUTSIDE = "O"


def _accuracy(n: int) -> Metric:
    # ignore_index -1: metric_inputs marks masked words and padding with -1.
    metric: Metric = torchmetric("classification", "MulticlassAccuracy")(
        num_classes=n, average="micro", ignore_index=-1
    )
    return metric


class TokenClassification(ClassIndexed):
    """One class out of ``C`` per word; ``[B, T', C]`` logits."""

    name = "token_classification"
    losses = ("cross_entropy",)
    metric_factories: ClassVar[dict[str, MetricFactory]] = {
        "accuracy": _accuracy,
        "span_f1": lambda n: span_f1_metric(n),
    }
    token_level = True
    accepts_classes = True
    accepts_class_weights = True

    @property
    def default_metrics(self) -> tuple[str, ...]:
        # span_f1 means something for BIO tags only; a POS tagger reports accuracy.
        return ("accuracy",)

    # -- declaration ---------------------------------------------------------------------
    def check_classes(self, task: TaskLike, classes: list[str], where: str) -> None:
        if "span_f1" not in task.metric_names:
            return
        if not is_bio(classes):
            bad = next((c for c in classes if not _bio_label(c)), classes[0] if classes else "")
            raise ConfigError(
                f"{where}: span_f1 reads BIO tags (O, B-TYPE, I-TYPE); classes hold {bad!r}"
            )
        if classes != bio_order(classes, where, "classes"):
            raise ConfigError(
                f"{where}: span_f1 reads BIO classes in the order O, B-T1, I-T1, B-T2, I-T2, ... "
                f"(types sorted); declare them as {bio_order(classes, where, 'classes')}"
            )

    def make_head(
        self,
        task: TaskLike,
        in_dim: int,
        spatial: bool,
        params: Any,
        input_size: tuple[int, int] | None = None,
    ) -> nn.Module | None:
        # A feature map never reaches here: HeadFactory refuses a token-level task on any
        # encoder but a sequence encoder first (HeadSpec.tokens).
        return TokenHead(in_dim, self.n_outputs(task), params, task.name)

    # -- data ----------------------------------------------------------------------------
    def _labels(self, task: TaskLike, series: pd.Series, source: str) -> list[list[str | None]]:
        """Every sentence's labels as text (``None``: no label), missing sentences empty."""
        markers = {_text(m) for m in task.missing or []}
        out: list[list[str | None]] = []
        for row, cell in zip(series.index, list_column(series, source), strict=True):
            labels: list[str | None] = []
            for value in cell or []:
                if isinstance(value, list | tuple | dict | np.ndarray):
                    raise DataError(
                        f"{source}: column '{series.name}' row {row}: a word's label must be "
                        f"one value, got {type(value).__name__} {str(value)[:40]}"
                    )
                label = None if _missing(value) else _text(value)
                if label is not None and (label == "" or label in markers):
                    label = None
                labels.append(label)
            out.append(labels)
        return out

    def fit(
        self,
        task: TaskLike,
        table: pd.DataFrame,
        train_rows: np.ndarray,
        source: str,
        load_arrays: LoadArrays,
    ) -> dict[str, Any]:
        where = f"{source}: task '{task.name}'"
        column = task.targets[0]
        labels = self._labels(task, table[column], source)
        seen = sorted({x for row in labels for x in row if x is not None})
        train = {x for i in train_rows for x in labels[int(i)] if x is not None}
        if task.classes is not None:
            outside = sorted(set(seen) - set(task.classes))
            if outside:
                raise DataError(
                    f"{where}: column '{column}' has labels outside the declared classes "
                    f"{task.classes[:10]}: {outside[:5]}"
                )
            classes = list(task.classes)
        elif is_bio(seen):
            classes = bio_order(seen, where, column)
        else:
            classes = seen
        if len(train) < 2:
            raise DataError(
                f"{where}: column '{column}' has {len(train)} label(s) {sorted(train)[:3]} in the "
                "training rows; a token_classification task needs at least 2 (declare "
                "missing = ['_'] if '_' means 'no label' there)"
            )
        if "span_f1" in task.metric_names and not is_bio(classes):
            bad = next(c for c in classes if not _bio_label(c))
            raise DataError(
                f"{where}: metric span_f1 reads BIO tags (O, B-TYPE, I-TYPE) but column "
                f"'{column}' has the label {bad!r}"
            )
        if task.class_weights is not None and len(task.class_weights) != len(classes):
            raise DataError(
                f"{where}: class_weights has {len(task.class_weights)} values for "
                f"{len(classes)} classes {classes[:10]}"
            )
        return {"classes": classes}

    def encode(
        self, task: TaskLike, table: pd.DataFrame, source: str, load_arrays: LoadArrays
    ) -> tuple[Tensor, Tensor]:
        classes = task.classes
        if classes is None:
            raise ValueError(f"task {task.name!r} was not fitted: classes unknown")
        column = task.targets[0]
        index = {c: i for i, c in enumerate(classes)}
        labels = self._labels(task, table[column], source)

        def code(value: Any, i: int, j: int) -> int | None:
            label = labels[i][j]
            if label is None:
                return None
            found = index.get(label)
            if found is None:
                raise DataError(
                    f"{source}: task '{task.name}': column '{column}' row {table.index[i]} "
                    f"word {j + 1} has the label {label!r}, outside the classes "
                    f"{classes[:10]}{' ...' if len(classes) > 10 else ''}"
                )
            return found

        codes, valid = encode_list_column(table[column], source, code)
        # Past a sentence's end the code is -1 (the mask is False there too): a perfect output
        # of these targets then knows each sentence's length (see perfect_output).
        lengths = torch.from_numpy(sentence_lengths(labels))
        past = torch.arange(codes.shape[1]) >= lengths.unsqueeze(1)
        return codes.masked_fill(past, -1), valid

    def example(self, rng: np.random.Generator, n: int) -> tuple[dict[str, Any], pd.DataFrame]:
        types = ["LOC", "PER"]
        rows: list[list[str | None] | None] = []
        for i in range(n):
            length = int(rng.integers(2, 7))
            tags: list[str | None] = []
            while len(tags) < length:
                if rng.random() < 0.5:
                    tags.append(OUTSIDE)
                    continue
                kind = types[int(rng.integers(0, 2))]
                tags += [f"B-{kind}"] + [f"I-{kind}"] * int(rng.integers(0, 2))
            tags = tags[:length]
            if i % 4 == 2:
                tags[0] = None  # a sentence with a word unlabelled (its first: see the suite)
            rows.append(None if i == 1 else tags)
        rows[0] = ["B-PER", "I-PER", "O", "B-LOC"]
        column = np.empty(n, dtype=object)
        column[:] = rows
        declared = {"target": "ner", "metrics": ["accuracy", "span_f1"]}
        return declared, pd.DataFrame({"ner": column})

    # -- loss ----------------------------------------------------------------------------
    def masked_loss(self, state: LossState, output: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        target, mask = fit_targets(output, target, mask)
        return F.cross_entropy(output[mask], target[mask], weight=state.class_weights)

    def unit_losses(self, state: LossState, output: Tensor, target: Tensor) -> Tensor:
        target = fit_targets(output, target, target)[0]
        # Masked-out entries may hold any placeholder; clamp so the gather stays in range.
        safe = target.clamp(0, output.shape[-1] - 1)
        logits = output.movedim(-1, 1)
        return F.cross_entropy(logits, safe, weight=state.class_weights, reduction="none")

    def perfect_output(self, task: TaskLike, target: Tensor) -> Tensor:
        onehot = F.one_hot(target.long().clamp(min=0), self.n_outputs(task)).float()
        # Exact zeros past each sentence's end, as the token head gives them.
        return (onehot * 60.0 - 30.0) * (target >= 0).unsqueeze(-1)

    # -- evaluation and prediction -------------------------------------------------------
    def metric_inputs(
        self, task: TaskLike, output: Tensor, target: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``[N, T']`` predicted class indices and targets, -1 where no label: the sentence
        structure stays (span F1 needs it); accuracy ignores the -1 entries."""
        target, mask = fit_targets(output, target, mask)
        preds = output.argmax(dim=-1)
        return preds, torch.where(mask, target, torch.full_like(target, -1))

    def degenerate(self, name: str, target: Tensor) -> bool:
        return not bool((target >= 0).any())

    def decode(self, task: TaskLike, output: Tensor) -> dict[str, np.ndarray]:
        assert task.classes is not None
        classes = np.array(task.classes, dtype=object)
        lengths = output_lengths(output)
        finite = torch.isfinite(output).flatten(1).all(dim=1).numpy()
        ids = output.nan_to_num().argmax(dim=-1).numpy()
        if canonical_bio(task.classes):
            ids = repair_bio(ids)
        column = np.empty(len(ids), dtype=object)
        column[:] = [
            classes[ids[i, : int(n)]].tolist() if finite[i] else None for i, n in enumerate(lengths)
        ]
        return {task.name: column}

    # -- distillation --------------------------------------------------------------------
    def teacher_units(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        # One tempered softmax per word: ``[B, T', C]`` -> ``[B, T']``.
        t = min(student.shape[1], teacher.shape[1])
        return softmax_teacher_units(
            student[:, :t].movedim(-1, 1), teacher[:, :t].movedim(-1, 1), temperature
        )


class TokenHead(nn.Module):
    """The per-word tower of a token-level task: the run's head layers (``[model.head]``
    widths, activation, dropout; layer norm or none) applied to every word vector, a linear
    output of ``C`` logits, and exact zeros kept at the padding positions, which sequence
    encoders return as zero vectors (see :mod:`polytask.models.sequence`)."""

    def __init__(self, in_dim: int, out_dim: int, params: Any, task: str) -> None:
        super().__init__()
        if params.norm == "batch":
            raise ConfigError(
                f"config error: model.head.norm: batch normalisation does not apply per word "
                f"(task {task!r} is token-level); use 'layer' or 'none'"
            )
        layers: list[nn.Module] = []
        width = in_dim
        for w in params.widths:
            layers.append(nn.Linear(width, w))
            if params.norm == "layer":
                layers.append(nn.LayerNorm(w))
            layers.append(_ACTIVATIONS[params.activation]())
            if params.dropout > 0:
                layers.append(nn.Dropout(params.dropout))
            width = w
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(width, out_dim)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 3:
            raise ConfigError(
                "config error: a token-level task needs a sequence encoder giving a vector per "
                f"word ([B, T, D]), got a representation of shape {tuple(z.shape)}; set "
                "model.encoder.name = 'tokens'"
            )
        logits: Tensor = self.out(self.hidden(z))
        words = (z != 0).any(dim=-1, keepdim=True)
        return torch.where(words, logits, torch.zeros((), dtype=logits.dtype))


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


# -- BIO spans ----------------------------------------------------------------------------
def _bio_label(label: str) -> bool:
    return label == OUTSIDE or (label[:2] in ("B-", "I-") and len(label) > 2)


def is_bio(labels: list[str]) -> bool:
    """Every label is ``O``, ``B-TYPE`` or ``I-TYPE`` (and there is a span type)."""
    return bool(labels) and all(map(_bio_label, labels)) and any(x != OUTSIDE for x in labels)


def canonical_bio(classes: list[str]) -> bool:
    """``classes`` are BIO labels in :func:`bio_order`'s order (what span F1 and the repair
    of predictions read)."""
    return is_bio(classes) and classes == bio_order(classes, "", "")


def bio_order(labels: list[str], where: str, column: str) -> list[str]:
    """BIO labels in the order span F1 reads: ``O``, then ``B-T``, ``I-T`` per type, sorted
    (id 0 is ``O``, id ``2k+1`` begins a span of type ``k``, id ``2k+2`` continues it)."""
    bad = [x for x in labels if not _bio_label(x)]
    if bad:
        raise DataError(f"{where}: '{column}' has the non-BIO label {bad[0]!r}")
    types = sorted({x[2:] for x in labels if x != OUTSIDE})
    return [OUTSIDE] + [f"{p}-{t}" for t in types for p in "BI"]


def repair_bio(ids: np.ndarray) -> np.ndarray:
    """Canonical BIO ids (see :func:`bio_order`) of ``[N, T]`` sentences with every ``I-X``
    that does not continue a span of type X turned into ``B-X`` (``conlleval``'s reading)."""
    out: np.ndarray = ids.copy()
    for j in range(out.shape[1]):
        inside = (out[:, j] > 0) & (out[:, j] % 2 == 0)
        if j == 0:
            starts = inside
        else:
            prev = out[:, j - 1]
            same = (prev > 0) & ((prev - 1) // 2 == (out[:, j] - 1) // 2)
            starts = inside & ~same
        out[starts, j] -= 1
    return out


def spans(ids: np.ndarray) -> set[tuple[int, int, int, int]]:
    """The spans ``(sentence, start, end, type)`` (end exclusive) of ``[N, T]`` canonical BIO
    ids; negative ids (no label, padding) count as ``O``."""
    fixed = repair_bio(np.where(ids < 0, 0, ids))
    found: set[tuple[int, int, int, int]] = set()
    for i, row in enumerate(fixed.tolist()):
        start = -1
        for j, v in enumerate([*row, 0]):
            continues = start >= 0 and v > 0 and v % 2 == 0
            if start >= 0 and not continues:
                found.add((i, start, j, (row[start] - 1) // 2))
                start = -1
            if v > 0 and v % 2 == 1:
                start = j
    return found


def span_counts(preds: np.ndarray, target: np.ndarray) -> tuple[int, int, int]:
    """True positives, predicted spans and gold spans of ``[N, T]`` canonical BIO ids
    (targets -1 where there is no label; predictions there count as ``O``)."""
    gold = spans(target)
    guessed = spans(np.where(target < 0, 0, preds))
    return len(gold & guessed), len(guessed), len(gold)


_SPAN_F1: type[Metric] | None = None


def span_f1_metric(n_classes: int) -> Metric:
    """Exact-match span F1 of canonical BIO ids as a torchmetrics ``Metric`` (sums of true
    positives, predicted and gold spans; ``2 TP / (pred + gold)``, 0 when both are 0). The
    class is built on first use: torchmetrics costs seconds to import (see
    :func:`polytask.tasks.kinds.base.torchmetric`)."""
    global _SPAN_F1
    if _SPAN_F1 is None:

        class SpanF1(count_score_metric()):  # type: ignore[misc]
            def __init__(self, n_classes: int) -> None:
                super().__init__()
                self.n_classes = n_classes
                for name in ("tp", "predicted", "gold"):
                    self.add_state(name, default=torch.tensor(0.0), dist_reduce_fx="sum")

            def update(self, preds: Tensor, target: Tensor) -> None:
                tp, predicted, gold = span_counts(preds.cpu().numpy(), target.cpu().numpy())
                self.tp += tp
                self.predicted += predicted
                self.gold += gold

            def compute(self) -> Tensor:
                total = self.predicted + self.gold
                return torch.where(total > 0, 2 * self.tp / total.clamp(min=1), 0.0)

        _SPAN_F1 = SpanF1
    factory: Any = _SPAN_F1
    metric: Metric = factory(n_classes)
    return metric


def output_lengths(output: Tensor) -> np.ndarray:
    """Each sentence's length read from ``[N, T, C]`` token logits: one past the last word
    whose logits are not all exactly zero (the padding the token head keeps at zero)."""
    if output.shape[1] == 0:
        return np.zeros(output.shape[0], dtype=np.int64)
    words = (output != 0).any(dim=-1)
    position = torch.arange(1, output.shape[1] + 1, device=output.device)
    return (words * position).amax(dim=1).cpu().numpy().astype(np.int64)


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def _text(value: object) -> str:
    """A label as text, as class labels are compared elsewhere (``1.0`` is ``"1"``)."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()
