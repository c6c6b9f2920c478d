"""``dependency``: a head word and a relation label per word of a sentence (a dependency
tree), scored by the biaffine parser of Dozat & Manning, "Deep Biaffine Attention for Neural
Dependency Parsing" (ICLR 2017).

Note to the token-level plumbing (:mod:`polytask.tasks.kinds.tokens`): the output is **not**
``[B, T', T'+1, 1+L]``. Relation scores for every (dependent, head) pair would make a split's
outputs ``O(T^2 L)`` per sentence (2.3 GB for EWT's development set), so the head gives
``[B, T', F + T' + 1]``: ``F = 1 + L + 2 L (rank + 1)`` fixed channels (a word flag, the
relation scores under ROOT, the factors of a low-rank bilinear relation classifier) and then
the ``T' + 1`` arc scores (see :mod:`polytask.tasks.biaffine` for the table). Outputs of
batches of different lengths pad with zeros at the end of dims 1 and 2
(:func:`~polytask.tasks.kinds.tokens.pad_rows`): padded words have flag 0 and are never read.

**Declaration**: ``target = ["head", "deprel"]``, the two list columns ``data.format =
"conllu"`` gives (any two list columns: heads as integers, 0 = ROOT, word ``k`` = ``k``, and
relation labels). A word whose head or relation is missing (``None``, NaN, ``_``, or one of
the task's ``missing`` labels) is unlabelled: it stays a word of the sentence (a candidate
head of the others) but has no loss and is not scored. A missing sentence has no labels.

**Relations** (the task's ``classes``) are the labels of the whole table, sorted, subtypes
included (``nmod:poss``), as the other class kinds fit them, so that a relation seen only in
the test rows is a scoreable wrong prediction rather than an error; or the declared
``classes``. Declaring universal relations only (``nmod`` without ``nmod:poss``) trains on them:
a label outside the declared classes whose universal part (before ``:``) is declared is read
as that part; any other is an error naming it.

**Loss**: per labelled word, the cross-entropy of its gold head among the candidates (ROOT and
the sentence's words, never padding, never the word itself) plus the cross-entropy of its gold
relation on the gold-head arc (Dozat & Manning's training objective), averaged over the words.

**Metrics**: ``las`` and ``uas`` over every labelled word, punctuation included, as the CoNLL
2018 shared task counts them (Zeman et al. 2018), on trees decoded by
:func:`polytask.tasks.trees.decode_tree` (Chu-Liu/Edmonds with exactly one root, so every
prediction is a well-formed tree), with the relation predicted on the predicted arc. LAS
compares relations on their universal part (``nmod`` for ``nmod:poss``) as that task's
``conll18_ud_eval.py`` does (it strips subtypes before comparing), and as
:func:`polytask.tasks.trees.attachment_scores` does.

**Predictions**: ``<task>.<head column>`` (a list of head indices per sentence) and
``<task>.<relation column>`` (a list of relation labels); ``None`` for a sentence whose scores
are not finite.

**Distillation**: per word, the KL divergence between the teacher's and the student's joint
distribution over (head, relation): the KL over heads plus the teacher's expectation over
heads of the KL over relations, each a tempered softmax, times ``T²``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.errors import ConfigError, DataError
from polytask.tasks.biaffine import BiaffineScorer, fixed_channels
from polytask.tasks.kinds.base import (
    Kind,
    LoadArrays,
    LossState,
    MetricFactory,
    TaskLike,
    classes_mismatch,
    count_score_metric,
)
from polytask.tasks.kinds.tokens import UNSPECIFIED, fit_length, list_column, per_sentence
from polytask.tasks.trees import decode_tree

if TYPE_CHECKING:
    from torchmetrics import Metric

#: The biaffine head's sizes: Dozat & Manning's 500 / 100 MLP widths scaled down for CPUs,
#: their MLP dropout, and the rank of each relation's bilinear matrix (see
#: :mod:`polytask.tasks.biaffine`: the rank keeps the output linear in the sentence length).
ARC_DIM = 256
LABEL_DIM = 64
RANK = 4
DROPOUT = 0.33

#: Target codes that carry no label (the mask is False there): a word without a head or
#: relation, and a position past the sentence's end. A labelled word's code is
#: ``head * L + relation`` (``L`` relations), one int64 per word for the two columns.
UNLABELLED = -1
PADDING = -2


class Dependency(Kind):
    """A head word and a relation label per word (a dependency tree); biaffine scores.

    The output is ``[B, T', F + T' + 1]``: per word ``F`` fixed channels then its arc scores
    (see the module docstring and :mod:`polytask.tasks.biaffine`)."""

    name = "dependency"
    losses = ("cross_entropy",)
    metric_factories: ClassVar[dict[str, MetricFactory]] = {
        "las": lambda n: attachment_metric(labelled=True),
        "uas": lambda n: attachment_metric(labelled=False),
    }
    token_level = True
    accepts_classes = True

    # -- declaration ---------------------------------------------------------------------
    def check_target(self, task: TaskLike, where: str) -> None:
        target = task.target
        if isinstance(target, str) or len(target) != 2 or len(set(target)) != 2:
            raise ConfigError(
                f"{where}: a dependency target is two list columns, the heads and the "
                'relations, e.g. target = ["head", "deprel"]'
            )

    def n_outputs(self, task: TaskLike) -> int:
        """The number of relation labels (the head's output width depends on the sentence
        length too: see the module docstring)."""
        if not task.classes:
            raise ConfigError(f"task {task.name!r}: relation labels are not known yet")
        return len(task.classes)

    def metric_for_direction(self, task: TaskLike, name: str) -> Metric:
        return self.metric_factories[name](0)

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
        # The run's head dropout when set, else the paper's 0.33 (a tower's default of 0
        # would leave the parser's four MLPs unregularised).
        dropout = float(getattr(params, "dropout", 0.0)) or DROPOUT
        return BiaffineScorer(in_dim, self.n_outputs(task), ARC_DIM, LABEL_DIM, RANK, dropout)

    # -- data ----------------------------------------------------------------------------
    def _sentences(
        self, task: TaskLike, table: pd.DataFrame, source: str
    ) -> list[tuple[list[Any], list[Any]] | None]:
        """Each row's (heads, relations), checked to pair up; None for a missing sentence.
        A missing column of a present sentence counts as every word unlabelled."""
        head_col, rel_col = task.targets
        heads = list_column(table[head_col], source)
        rels = list_column(table[rel_col], source)
        out: list[tuple[list[Any], list[Any]] | None] = []
        for row, h, r in zip(table.index, heads, rels, strict=True):
            if h is None and r is None:
                out.append(None)
                continue
            h = h if h is not None else [None] * len(r or [])
            r = r if r is not None else [None] * len(h)
            if len(h) != len(r):
                raise DataError(
                    f"{source}: task '{task.name}' row {row}: column '{head_col}' has "
                    f"{len(h)} words but '{rel_col}' has {len(r)}; expected one head and one "
                    "relation per word"
                )
            out.append((h, r))
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
        rel_col = task.targets[1]
        markers = _markers(task)
        sentences = self._sentences(task, table, source)
        seen: set[str] = set()
        for s in sentences:
            if s is not None:
                seen.update(x for x in map(_relation_text, s[1]) if x and x not in markers)
        train: set[str] = set()
        for i in train_rows:
            s = sentences[int(i)]
            if s is not None:
                train.update(x for x in map(_relation_text, s[1]) if x and x not in markers)
        if not train:
            raise DataError(
                f"{where}: column '{rel_col}' has no relation label in the training rows"
            )
        if task.classes is None:
            return {"classes": sorted(seen)}
        index = relation_index(tuple(task.classes))
        outside = sorted(x for x in seen if _lookup(index, x) is None)
        if outside:
            raise DataError(
                f"{where}: column '{rel_col}' has relations outside the declared classes "
                f"(and whose universal part is not declared either): {outside[:5]}"
            )
        return {}

    def encode(
        self, task: TaskLike, table: pd.DataFrame, source: str, load_arrays: LoadArrays
    ) -> tuple[Tensor, Tensor]:
        if task.classes is None:
            raise ValueError(f"task {task.name!r} was not fitted: relation labels unknown")
        head_col, rel_col = task.targets
        n_labels = len(task.classes)
        index = relation_index(tuple(task.classes))
        markers = _markers(task)
        sentences = self._sentences(task, table, source)
        longest = max((len(s[0]) for s in sentences if s is not None), default=0)
        codes = np.full((len(sentences), max(longest, 1)), PADDING, dtype=np.int64)
        for i, s in enumerate(sentences):
            if s is None:
                continue
            heads, rels = s
            n = len(heads)
            codes[i, :n] = UNLABELLED
            for k, (h, r) in enumerate(zip(heads, rels, strict=True)):
                rel = _relation_text(r)
                if not rel or rel in markers:
                    continue
                head = _head_value(h, markers)
                if head is None:
                    continue
                row = table.index[i]
                if not 0 <= head <= n or head == k + 1:
                    raise DataError(
                        f"{source}: task '{task.name}' row {row} word {k + 1}: column "
                        f"'{head_col}' has head {h!r}; expected 0 (root) or another word's "
                        f"position 1..{n}"
                    )
                found = _lookup(index, rel)
                if found is None:
                    raise DataError(
                        f"{source}: task '{task.name}' row {row} word {k + 1}: column "
                        f"'{rel_col}' has the relation {rel!r}, outside the classes "
                        f"{task.classes[:10]}{' ...' if n_labels > 10 else ''}"
                    )
                codes[i, k] = head * n_labels + found
        target = torch.from_numpy(codes)
        return target, target >= 0

    def example(self, rng: np.random.Generator, n: int) -> tuple[dict[str, Any], pd.DataFrame]:
        relations = ["nsubj", "obj", "nmod:poss", "punct"]
        heads: list[list[int | None] | None] = []
        rels: list[list[str | None] | None] = []
        for i in range(n):
            length = int(rng.integers(3, 7))
            # The first two words are leaves: a sentence may leave them unlabelled without a
            # labelled word depending on them (its relation scores read its head's channels).
            tree = random_tree(rng, length, leaves=2)
            labels: list[str | None] = [
                "root" if h == 0 else relations[int(rng.integers(0, 4))] for h in tree
            ]
            h_row: list[int | None] = list(tree)
            if i % 4 == 2:  # words without labels: both columns, or the relation only
                h_row[0] = None
                labels[1] = UNSPECIFIED
            heads.append(None if i == 1 else h_row)
            rels.append(None if i == 1 else labels)
        head_column = np.empty(n, dtype=object)
        head_column[:] = heads
        rel_column = np.empty(n, dtype=object)
        rel_column[:] = rels
        declared = {"target": ["head", "deprel"]}
        return declared, pd.DataFrame({"head": head_column, "deprel": rel_column})

    # -- loss ----------------------------------------------------------------------------
    def _gold(self, n_labels: int, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Gold heads and relations ``[B, T']`` of ``target`` lined up with ``output``; any
        placeholder (masked words, padding) becomes a head and relation in range."""
        code = fit_length(target, output.shape[1], PADDING).clamp(min=0)
        heads = torch.div(code, n_labels, rounding_mode="floor").clamp(max=output.shape[1])
        return heads, code % n_labels

    def masked_loss(self, state: LossState, output: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        mask = fit_length(mask, output.shape[1], False)
        return self.unit_losses(state, output, target)[mask].mean()

    def unit_losses(self, state: LossState, output: Tensor, target: Tensor) -> Tensor:
        parts = Scores.of(output)
        heads, rels = self._gold(parts.n_labels, output, target)
        # The gold head is always a candidate: a placeholder pointing at padding (or the word
        # itself) still gives a finite value, which the mask then drops.
        allowed = parts.allowed() | F.one_hot(heads, parts.length + 1).bool()
        log_p = torch.log_softmax(parts.arcs.masked_fill(~allowed, -torch.inf), dim=-1)
        arc = -log_p.gather(-1, heads.unsqueeze(-1)).squeeze(-1)
        labels = parts.labels_at(heads)
        rel = F.cross_entropy(labels.movedim(-1, 1), rels, reduction="none")
        return arc + rel

    def perfect_output(self, task: TaskLike, target: Tensor) -> Tensor:
        n_labels = self.n_outputs(task)
        batch, length = target.shape
        words = target != PADDING
        heads, rels = self._gold(n_labels, target.new_zeros(batch, length, 1), target)
        confident = F.one_hot(rels, n_labels).float() * 60.0 - 30.0
        dep = torch.zeros(batch, length, n_labels, RANK + 1)
        dep[..., -1] = confident  # the relation's score is its dependent-side bias term
        arcs = F.one_hot(heads, length + 1).float() * 60.0 - 30.0
        arcs = torch.where((target >= 0).unsqueeze(-1), arcs, torch.zeros(()))
        out = torch.cat(
            [
                words.float().unsqueeze(-1),
                confident,
                dep.flatten(2),
                torch.zeros(batch, length, n_labels * (RANK + 1)),
                arcs,
            ],
            dim=-1,
        )
        return out * words.unsqueeze(-1)

    # -- evaluation and prediction -------------------------------------------------------
    def predict(self, task: TaskLike, output: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The decoded trees of ``output``: heads and relation ids ``[B, T']`` (-1 past each
        sentence's end and for a sentence whose scores are not finite), and whether each
        sentence's scores were finite."""
        parts = Scores.of(output.detach())
        if parts.n_labels != self.n_outputs(task):
            raise ValueError(
                f"dependency output scores {parts.n_labels} relations; task '{task.name}' has "
                f"{self.n_outputs(task)}"
            )
        lengths = parts.words.sum(dim=1).cpu().numpy()
        arcs = parts.arcs.masked_fill(~parts.allowed(), -torch.inf).double().cpu().numpy()
        fixed = output.detach()[..., : parts.fixed]
        read = torch.where(parts.words.unsqueeze(-1), fixed, 0.0)  # padding is never read
        finite: np.ndarray = torch.isfinite(read).flatten(1).all(-1).cpu().numpy()
        heads = np.full((output.shape[0], parts.length), -1, dtype=np.int64)
        for b, n in enumerate(lengths.tolist()):
            if n == 0:
                continue
            scores = np.zeros((n + 1, n + 1))
            scores[1:] = arcs[b, :n, : n + 1]
            block = scores[1:]
            if not finite[b] or np.isnan(block).any() or np.isposinf(block).any():
                finite[b] = False
                continue
            heads[b, :n] = decode_tree(scores)
        known = torch.from_numpy(heads).to(output.device)
        labels = parts.labels_at(known.clamp(min=0))
        rels = labels.argmax(dim=-1).cpu().numpy()
        return heads, np.where(heads >= 0, rels, -1), finite

    def metric_inputs(
        self, task: TaskLike, output: Tensor, target: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``[W, 2]`` (head, universal relation id) of the predicted trees and of the gold
        ones, one row per labelled word."""
        assert task.classes is not None
        n_labels = len(task.classes)
        mask = fit_length(mask, output.shape[1], False)
        gold_heads, gold_rels = self._gold(n_labels, output, target)
        heads, rels, _ = self.predict(task, output)
        universal = universal_ids(tuple(task.classes)).to(output.device)
        pred_heads = torch.from_numpy(heads).to(output.device)
        pred_rels = torch.from_numpy(rels).to(output.device)
        pred_univ = torch.where(pred_rels >= 0, universal[pred_rels.clamp(min=0)], -1)
        preds = torch.stack([pred_heads, pred_univ], dim=-1)
        gold = torch.stack([gold_heads, universal[gold_rels]], dim=-1)
        return preds[mask], gold[mask]

    def decode(self, task: TaskLike, output: Tensor) -> dict[str, np.ndarray]:
        assert task.classes is not None
        head_col, rel_col = task.targets
        heads, rels, finite = self.predict(task, output)
        lengths = (heads >= 0).sum(axis=1)
        classes = np.array(task.classes, dtype=object)
        head_lists = per_sentence(heads, lengths)
        rel_lists = per_sentence(classes[np.maximum(rels, 0)], lengths)
        head_lists[~finite] = None
        rel_lists[~finite] = None
        return {f"{task.name}.{head_col}": head_lists, f"{task.name}.{rel_col}": rel_lists}

    # -- distillation --------------------------------------------------------------------
    def teacher_mismatch(self, student: TaskLike, teacher: TaskLike) -> str | None:
        return classes_mismatch(student, teacher)

    def teacher_units(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        t = temperature
        length = min(student.shape[1], teacher.shape[1])
        s = Scores.of(_cut(student, length))
        p = Scores.of(_cut(teacher, length))
        allowed = p.allowed()
        log_q = torch.log_softmax(s.arcs.masked_fill(~allowed, -torch.inf) / t, dim=-1)
        log_p = torch.log_softmax(p.arcs.masked_fill(~allowed, -torch.inf) / t, dim=-1)
        prob = log_p.exp()
        arc_kl = torch.where(allowed, prob * (log_p - log_q), 0.0).sum(-1)
        # Relations: KL at every head, weighted by the teacher's probability of that head.
        lab_q = torch.log_softmax(s.all_labels() / t, dim=-1)
        lab_p = torch.log_softmax(p.all_labels() / t, dim=-1)
        label_kl = (lab_p.exp() * (lab_p - lab_q)).sum(-1)
        return (arc_kl + (prob * label_kl).sum(-1)) * t * t


def _cut(output: Tensor, length: int) -> Tensor:
    """An output cut to its first ``length`` words (and heads)."""
    fixed = output.shape[-1] - output.shape[1] - 1
    return torch.cat(
        [output[:, :length, :fixed], output[:, :length, fixed : fixed + length + 1]], -1
    )


class Scores:
    """The parts of a dependency output ``[B, T, F + T + 1]`` (layout: :mod:`..biaffine`)."""

    def __init__(self, output: Tensor, n_labels: int, rank: int) -> None:
        batch, length = output.shape[:2]
        self.length = length
        self.n_labels = n_labels
        self.fixed = fixed_channels(n_labels, rank)
        width = n_labels * (rank + 1)
        self.words = output[..., 0] > 0
        self.root = output[..., 1 : 1 + n_labels]
        factors = (batch, length, n_labels, rank + 1)
        self.dep = output[..., 1 + n_labels : 1 + n_labels + width].reshape(factors)
        self.head = output[..., 1 + n_labels + width : self.fixed].reshape(factors)
        self.arcs = output[..., self.fixed :]

    @classmethod
    def of(cls, output: Tensor, rank: int = RANK) -> Scores:
        """The parts of ``output``, its relation count read from its width."""
        if output.dim() != 3:
            raise ValueError(
                f"dependency output of shape {tuple(output.shape)}; expected [B, T, F + T + 1]"
            )
        fixed = output.shape[-1] - output.shape[1] - 1
        n_labels, rest = divmod(fixed - 1, 2 * rank + 3)
        if rest or n_labels < 1:
            raise ValueError(
                f"dependency output of width {output.shape[-1]} for {output.shape[1]} words: "
                f"expected 1 + L + 2 L ({rank} + 1) + {output.shape[1]} + 1 for L relations"
            )
        return cls(output, n_labels, rank)

    def allowed(self) -> Tensor:
        """``[B, T, T + 1]``: the candidate heads of each word (ROOT and the sentence's other
        words; never padding)."""
        batch = self.words.shape[0]
        root = self.words.new_ones(batch, 1)
        heads = torch.cat([root, self.words], dim=1).unsqueeze(1).expand(-1, self.length, -1)
        # Word i (row i) is head i + 1 (column 0 is ROOT): a word never heads itself.
        itself = torch.arange(self.length + 1, device=heads.device) == torch.arange(
            1, self.length + 1, device=heads.device
        ).unsqueeze(-1)
        return heads & ~itself

    def labels_at(self, heads: Tensor) -> Tensor:
        """``[B, T, L]`` relation scores of each word under the head ``heads`` (``[B, T]``,
        0 = ROOT)."""
        rows = (heads - 1).clamp(min=0)
        index = rows[..., None, None].expand(-1, -1, *self.head.shape[2:])
        head = self.head.gather(1, index)
        scores = (self.dep[..., :-1] * head[..., :-1]).sum(-1) + self.dep[..., -1] + head[..., -1]
        return torch.where((heads == 0).unsqueeze(-1), self.root, scores)

    def all_labels(self) -> Tensor:
        """``[B, T, T + 1, L]`` relation scores under every head (distillation only)."""
        words = torch.einsum("bilr,bjlr->bijl", self.dep[..., :-1], self.head[..., :-1])
        words = words + self.dep[..., -1].unsqueeze(2) + self.head[..., -1].unsqueeze(1)
        return torch.cat([self.root.unsqueeze(2), words], dim=2)


# -- labels ---------------------------------------------------------------------------------
def _relation_text(value: object) -> str:
    """A relation label as text; "" for a missing one (``None``, NaN, CoNLL-U's ``_``)."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    text = str(value).strip()
    return "" if text == UNSPECIFIED else text


def _head_value(value: object, markers: set[str]) -> int | None:
    """A head as an int; None for a missing one (``None``, NaN, ``_``, a ``missing`` label).
    Anything else that is not an integer is left to the caller's range check as -1."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool | np.bool_):
        return -1
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return int(value) if float(value).is_integer() else -1
    text = str(value).strip()
    if text == UNSPECIFIED or text in markers:
        return None
    return int(text) if text.isdigit() else -1


def _markers(task: TaskLike) -> set[str]:
    missing = getattr(task, "missing", None) or []
    return {str(m).strip() for m in missing}


@functools.lru_cache(maxsize=64)
def relation_index(classes: tuple[str, ...]) -> dict[str, int]:
    """Label -> relation id of ``classes``."""
    return {c: i for i, c in enumerate(classes)}


def _lookup(index: dict[str, int], label: str) -> int | None:
    """The id of ``label``, or of its universal part when only that is declared."""
    found = index.get(label)
    return found if found is not None else index.get(label.split(":", 1)[0])


@functools.lru_cache(maxsize=64)
def universal_ids(classes: tuple[str, ...]) -> Tensor:
    """For each relation id, the id of its universal part (``acl`` for ``acl:relcl``) among
    the distinct universal parts: LAS compares relations on it (CoNLL 2018)."""
    parts = [c.split(":", 1)[0] for c in classes]
    order = {p: i for i, p in enumerate(sorted(set(parts)))}
    return torch.tensor([order[p] for p in parts], dtype=torch.int64)


def random_tree(rng: np.random.Generator, length: int, leaves: int = 0) -> list[int]:
    """A random single-root dependency tree of ``length`` words as a heads list (0 = ROOT,
    1-based words); its first ``leaves`` words have no dependents (``length > leaves``)."""
    inner = list(range(leaves + 1, length + 1))
    order = [int(x) for x in rng.permutation(inner)]
    heads = [0] * length
    for k, word in enumerate(order[1:], start=1):
        heads[word - 1] = order[int(rng.integers(0, k))]
    for word in range(1, leaves + 1):
        heads[word - 1] = inner[int(rng.integers(0, len(inner)))]
    return heads


# -- metrics --------------------------------------------------------------------------------
_ATTACHMENT: Any = None  # the Metric subclass, built on first use


def attachment_metric(labelled: bool) -> Metric:
    """UAS (``labelled=False``) or LAS as a torchmetrics ``Metric`` over ``[W, 2]`` rows of
    (head, relation id): the share of words whose head (and relation) is right. The class is
    built on first use: torchmetrics costs seconds to import (see
    :func:`polytask.tasks.kinds.base.torchmetric`)."""
    global _ATTACHMENT
    if _ATTACHMENT is None:

        class AttachmentScore(count_score_metric()):  # type: ignore[misc]
            def __init__(self, labelled: bool) -> None:
                super().__init__()
                self.labelled = labelled
                self.add_state("right", default=torch.tensor(0.0), dist_reduce_fx="sum")
                self.add_state("words", default=torch.tensor(0.0), dist_reduce_fx="sum")

            def update(self, preds: Tensor, target: Tensor) -> None:
                if preds.shape != target.shape or preds.dim() != 2 or preds.shape[1] != 2:
                    raise ValueError(
                        f"attachment score: preds {tuple(preds.shape)} and target "
                        f"{tuple(target.shape)}; expected both [W, 2] (head, relation)"
                    )
                right = preds[:, 0] == target[:, 0]
                if self.labelled:
                    right &= preds[:, 1] == target[:, 1]
                self.right += right.sum()
                self.words += right.numel()

            def compute(self) -> Tensor:
                score: Tensor = self.right / self.words
                return score

        _ATTACHMENT = AttachmentScore
    metric: Metric = _ATTACHMENT(labelled)
    return metric
