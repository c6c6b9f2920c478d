"""The ``dependency`` task kind and its biaffine head (Dozat & Manning 2017): output layout,
the loss over candidate heads, tree decoding, UAS/LAS, target encoding, distillation units,
and learning a generated treebank end to end through the token encoder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import polytask
from polytask.config import config_from_dict
from polytask.data.conllu import read_conllu
from polytask.data.inputs.tokens import TokensInput, TokensParams
from polytask.data.targets import encode_targets, fit_task
from polytask.errors import ConfigError, DataError
from polytask.evaluate.metrics import compute_metrics
from polytask.losses import TaskLoss
from polytask.models.config import ModelConfig
from polytask.models.heads import HeadFactory, HeadParams, HeadSpec
from polytask.models.model import build_model
from polytask.tasks import Task
from polytask.tasks.biaffine import BiaffineScorer, fixed_channels
from polytask.tasks.kinds.dependency import RANK, Scores, random_tree
from polytask.tasks.trees import attachment_scores

SOURCE = "toy"

# Small models: on 2 shared cores, two intra-op threads wait for each other more than they
# compute (the end-to-end test takes 10x longer).
pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _task(heads: list[list[int] | None], rels: list[list[str] | None], **kw: object) -> Task:
    table = _table(heads, rels)
    task = Task("dep", "dependency", ["head", "deprel"], **kw)  # type: ignore[arg-type]
    return fit_task(task, table, np.arange(len(table)), SOURCE)


def _table(heads: list[list[int] | None], rels: list[list[str] | None]) -> pd.DataFrame:
    h = np.empty(len(heads), dtype=object)
    h[:] = heads
    r = np.empty(len(rels), dtype=object)
    r[:] = rels
    return pd.DataFrame({"head": h, "deprel": r})


def _is_tree(heads: list[int]) -> bool:
    """One root, and every word reaches it."""
    if sum(h == 0 for h in heads) != 1:
        return False
    for start in range(1, len(heads) + 1):
        seen, node = set(), start
        while node != 0:
            if node in seen:
                return False
            seen.add(node)
            node = heads[node - 1]
    return True


# -- the head ---------------------------------------------------------------------------------
def test_biaffine_output_layout_and_padding() -> None:
    torch.manual_seed(0)
    scorer = BiaffineScorer(8, n_labels=5, arc_dim=16, label_dim=8, rank=RANK, dropout=0.0)
    z = torch.randn(2, 4, 8)
    z[1, 2:] = 0.0  # the second sentence has 2 words
    out = scorer(z)
    assert out.shape == (2, 4, fixed_channels(5, RANK) + 5) == (2, 4, 1 + 5 + 2 * 5 * 5 + 5)
    assert out[0, :, 0].tolist() == [1, 1, 1, 1] and out[1, :, 0].tolist() == [1, 1, 0, 0]
    assert (out[1, 2:] == 0).all()  # padding rows carry nothing
    parts = Scores.of(out)
    assert parts.n_labels == 5 and parts.arcs.shape == (2, 4, 5)
    allowed = parts.allowed()
    # Word 1 of sentence 2 may take ROOT or word 2; not itself, not the padded words 3, 4.
    assert allowed[1, 0].tolist() == [True, False, True, False, False]
    assert allowed[0, 3].tolist() == [True, True, True, True, False]
    # The factorised relation scores equal the bilinear form computed directly.
    with torch.no_grad():
        e = scorer.label_dep(z[0])
        g = scorer.label_head(z[0])
        dep = scorer.dep_factors(e).view(4, 5, RANK + 1)
        head = scorer.head_factors(g).view(4, 5, RANK + 1)
        direct = (dep[1, :, :-1] * head[3, :, :-1]).sum(-1) + dep[1, :, -1] + head[3, :, -1]
    heads = torch.tensor([[0, 4, 1, 1], [2, 1, 0, 0]])
    torch.testing.assert_close(parts.labels_at(heads)[0, 1], direct)
    torch.testing.assert_close(parts.labels_at(heads)[0, 0], parts.root[0, 0])
    torch.testing.assert_close(parts.all_labels()[0, 1, 4], direct)


def test_a_feature_map_is_refused_with_a_clear_message() -> None:
    # The refusal is HeadFactory's, for every token-level kind, before the kind's own head.
    task = _task([[0, 1]], [["root", "obj"]])
    spec = HeadSpec(task.n_outputs, task.dense, tokens=task.spec.token_level)
    factory = HeadFactory({task.name: spec}, HeadParams(), (8, 8))
    with pytest.raises(ConfigError, match=r"is token-level .* needs a sequence encoder"):
        factory.build(task.name, 8, spatial=True)


# -- the loss ---------------------------------------------------------------------------------
def test_loss_is_head_and_relation_cross_entropy_over_candidates_only() -> None:
    task = _task([[2, 0, 2], [0, 1]], [["nsubj", "root", "obj"], ["root", "obj"]])
    y, m = encode_targets(
        task, _table([[2, 0, 2], [0, 1]], [["nsubj", "root", "obj"], ["root", "obj"]]), SOURCE
    )
    n_labels = len(task.classes or [])
    assert task.classes == ["nsubj", "obj", "root"]
    assert y[0].tolist() == [2 * 3 + 0, 0 * 3 + 2, 2 * 3 + 1] and y[1, 2] == -2
    torch.manual_seed(1)
    out = torch.randn(2, 3, fixed_channels(n_labels, RANK) + 4)
    out[..., 0] = 1.0
    out[1, 2] = 0.0  # sentence 2 has two words
    loss = TaskLoss(task)(out, y, m)
    assert loss is not None
    # By hand: word 3 of sentence 1 (gold head 2, "obj") chooses among ROOT, words 1 and 2.
    parts = Scores.of(out)
    arcs = parts.arcs[0, 2, :3]
    arc = -torch.log_softmax(arcs, dim=0)[2]
    rel = F.cross_entropy(
        parts.labels_at(torch.tensor([[2, 0, 2]]).expand(2, 3))[0, 2], torch.tensor(1)
    )
    units = task.spec.unit_losses(TaskLoss(task), out, y)
    assert float(units[0, 2]) == pytest.approx(float(arc + rel), rel=1e-5)
    # Word 2 of sentence 2 (gold head 1) chooses between ROOT and word 1 only: the padded word
    # 3 and the word itself are no candidates.
    arcs = parts.arcs[1, 1, :2]
    arc = -torch.log_softmax(arcs, dim=0)[1]
    rel = F.cross_entropy(
        parts.labels_at(torch.tensor([[0, 1, 0]]).expand(2, 3))[1, 1], torch.tensor(1)
    )
    assert float(units[1, 1]) == pytest.approx(float(arc + rel), rel=1e-5)
    assert float(loss) == pytest.approx(float(units[m].mean()), rel=1e-6)
    # Scores of padding heads and of the padded word's row change nothing.
    moved = out.clone()
    moved[1, :, -1] += 50.0
    moved[1, 2, 1:] += 7.0
    assert float(TaskLoss(task)(moved, y, m)) == pytest.approx(float(loss), rel=1e-6)


def test_unlabelled_words_have_no_loss_but_stay_candidate_heads() -> None:
    heads: list[list[int] | None] = [[0, 1, None], None]  # type: ignore[list-item]
    rels: list[list[str] | None] = [["root", "obj", "obj"], None]
    task = _task(heads, rels)
    y, m = encode_targets(task, _table(heads, rels), SOURCE)
    assert m.tolist() == [[True, True, False], [False, False, False]]
    assert y[0, 2] == -1 and (y[1] == -2).all()  # an unlabelled word, a missing sentence
    torch.manual_seed(2)
    out = torch.randn(2, 3, fixed_channels(len(task.classes or []), RANK) + 4, requires_grad=True)
    with torch.no_grad():
        out[..., 0] = 1.0
    loss = TaskLoss(task)(out, y, m)
    assert loss is not None
    loss.backward()
    assert out.grad is not None
    assert (out.grad[0, 2] == 0).all() and (out.grad[1] == 0).all()
    # Word 3 is still a candidate head: raising its arc score for word 2 raises the loss.
    moved = out.detach().clone()
    moved[0, 1, -1] += 5.0
    assert float(TaskLoss(task)(moved, y, m)) > float(loss.detach())
    assert TaskLoss(task)(out, y, torch.zeros_like(m)) is None


# -- decoding and metrics ---------------------------------------------------------------------
def test_decoded_predictions_are_always_single_root_trees() -> None:
    torch.manual_seed(3)
    task = _task([[0, 1]], [["root", "obj"]])
    scorer = BiaffineScorer(6, n_labels=2, arc_dim=8, label_dim=4, rank=RANK, dropout=0.0)
    lengths = torch.randint(1, 12, (40,))
    z = torch.randn(40, 11, 6) * (torch.arange(11) < lengths.unsqueeze(1)).unsqueeze(-1)
    with torch.no_grad():
        out = scorer(z) * 5.0  # sharpen: greedy heads then form cycles and several roots
        out[..., 0] = (out[..., 0] > 0).float()
    decoded = task.spec.decode(task, out)
    greedy_trees = 0
    for b in range(40):
        heads = decoded["dep.head"][b]
        assert len(heads) == int(lengths[b]) == len(decoded["dep.deprel"][b])
        assert _is_tree(heads), heads
        greedy = Scores.of(out).arcs[b, : len(heads), : len(heads) + 1]
        itself = F.pad(torch.eye(len(heads)), (1, 0)).bool()
        greedy = greedy.masked_fill(itself, -math.inf)
        greedy_trees += _is_tree(greedy.argmax(-1).tolist())
    assert greedy_trees < 30  # the decoder had work to do


def test_uas_and_las_against_a_hand_computed_case() -> None:
    gold_h = [[2, 0, 2, 2], [0, 1, 1]]
    gold_r = [["nsubj", "root", "obj", "punct"], ["root", "nmod:poss", "punct"]]
    task = _task(gold_h, gold_r)
    y, m = encode_targets(task, _table(gold_h, gold_r), SOURCE)
    # Predicted: sentence 1 attaches "punct" to word 3 (head wrong) and calls word 3 "nsubj"
    # (relation wrong); sentence 2 says "nmod" for "nmod:poss" (right under CoNLL 2018's
    # universal-part rule) and "obj" for "punct" (wrong).
    pred_h = [[2, 0, 2, 3], [0, 1, 1]]
    pred_r = [["nsubj", "root", "nsubj", "punct"], ["root", "nmod", "obj"]]
    with_nmod = _task(gold_h + pred_h, gold_r + pred_r)
    py, _ = encode_targets(with_nmod, _table(pred_h, pred_r), SOURCE)
    out = with_nmod.spec.perfect_output(with_nmod, py)
    gy, gm = encode_targets(with_nmod, _table(gold_h, gold_r), SOURCE)
    values = compute_metrics(with_nmod, out, gy, gm)
    # 7 words: heads right 6 (all but "punct" of sentence 1); both right: sentence 1 words 1,
    # 2; sentence 2 words 1, 2 -> 4.
    assert values["uas"] == pytest.approx(6 / 7)
    assert values["las"] == pytest.approx(4 / 7)
    ref = attachment_scores(gold_h, pred_h, gold_r, pred_r)
    assert (values["uas"], values["las"]) == pytest.approx((ref.uas, ref.las))
    assert task.primary == "las"
    with pytest.raises(ValueError, match="scores 6 relations; task 'dep' has 5"):
        compute_metrics(task, out, y, m)


def test_decode_reads_back_the_labels_and_marks_non_finite_sentences() -> None:
    heads = [[2, 0, 2], [0, 1]]
    rels = [["nsubj", "root", "obj"], ["root", "obj"]]
    task = _task(heads, rels)
    y, _ = encode_targets(task, _table(heads, rels), SOURCE)
    out = task.spec.perfect_output(task, y)
    out[1, 0, -1] = math.nan  # the arc to a padded head (word 3): never read
    assert task.spec.decode(task, out)["dep.head"][1] == [0, 1]
    out[1, 0, -2] = math.nan  # word 1's arc to word 2
    decoded = task.spec.decode(task, out)
    assert decoded["dep.head"][0] == [2, 0, 2] and decoded["dep.deprel"][0] == rels[0]
    assert decoded["dep.head"][1] is None and decoded["dep.deprel"][1] is None


# -- targets ------------------------------------------------------------------------------------
def test_bad_targets_get_one_line_naming_the_column_and_word() -> None:
    with pytest.raises(ConfigError, match="two list columns"):
        Task("dep", "dependency", "head")
    with pytest.raises(DataError, match=r"row 0 word 2: column 'head' has head 5; expected 0"):
        encode_targets(
            _task([[0, 1]], [["root", "obj"]]), _table([[0, 5]], [["root", "obj"]]), SOURCE
        )
    task = _task([[0, 1]], [["root", "obj"]])
    with pytest.raises(DataError, match="row 0 word 2: column 'head' has head 2"):
        encode_targets(task, _table([[0, 2]], [["root", "obj"]]), SOURCE)  # itself
    with pytest.raises(DataError, match="column 'head' has 2 words but 'deprel' has 3"):
        encode_targets(task, _table([[0, 1]], [["root", "obj", "obj"]]), SOURCE)
    with pytest.raises(DataError, match="relation 'iobj', outside the classes"):
        encode_targets(task, _table([[0, 1]], [["root", "iobj"]]), SOURCE)


def test_declared_universal_relations_strip_subtypes() -> None:
    heads = [[0, 1, 1]]
    rels = [["root", "nmod:poss", "obl:tmod"]]
    full = _task(heads, rels)
    assert full.classes == ["nmod:poss", "obl:tmod", "root"]
    universal = _task(heads, rels, classes=["nmod", "obl", "root"])
    y, m = encode_targets(universal, _table(heads, rels), SOURCE)
    assert bool(m.all()) and (y[0] % 3).tolist() == [2, 0, 1]
    with pytest.raises(DataError, match=r"outside the declared classes .*\['obl:tmod'\]"):
        _task(heads, rels, classes=["nmod", "root"])


# -- distillation --------------------------------------------------------------------------------
def test_distillation_units_are_the_joint_kl_of_head_and_relation() -> None:
    task = _task([[2, 0]], [["nsubj", "root"]])
    torch.manual_seed(4)
    width = fixed_channels(2, RANK) + 3
    teacher = torch.randn(1, 2, width)
    student = torch.randn(1, 2, width)
    teacher[..., 0] = student[..., 0] = 1.0
    units = task.spec.teacher_units(student, teacher, 2.0)
    # By hand for word 1: joint distributions over (head in {ROOT, word 2}, relation).
    t = 2.0

    def joint(o: torch.Tensor) -> torch.Tensor:
        p = Scores.of(o)
        arcs = torch.log_softmax(p.arcs[0, 0, [0, 2]] / t, dim=0)
        labels = torch.log_softmax(p.all_labels()[0, 0, [0, 2]] / t, dim=-1)
        return arcs.unsqueeze(-1) + labels

    lp, lq = joint(teacher), joint(student)
    kl = float((lp.exp() * (lp - lq)).sum()) * t * t
    assert float(units[0, 0]) == pytest.approx(kl, rel=1e-5)
    assert float(task.spec.teacher_units(teacher, teacher, 2.0).abs().max()) < 1e-6


# -- learning -------------------------------------------------------------------------------------
#: A toy grammar: the head of each word is determined by its tag (a determiner and adjectives
#: attach to their noun, nouns to the verb as subject or object, the verb to ROOT, adverbs and
#: the final full stop to the verb). Each tag has a few word forms.
_WORDS = {
    "DET": ["the", "a", "every", "this"],
    "ADJ": ["big", "red", "old", "quick", "small"],
    "NOUN": ["dog", "cat", "man", "bird", "tree", "car"],
    "VERB": ["sees", "likes", "chases", "finds"],
    "ADV": ["often", "now"],
}


def toy_treebank(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """``n`` sentences of the toy grammar with their heads and relations (projective)."""
    forms, heads, rels = [], [], []
    for _ in range(n):
        words: list[str] = []
        head: list[int] = []
        rel: list[str] = []

        def phrase(role: str, words: list[str], head: list[int], rel: list[str]) -> None:
            start = len(words)
            words.append(str(rng.choice(_WORDS["DET"])))
            adjectives = int(rng.integers(0, 3))
            words.extend(str(rng.choice(_WORDS["ADJ"])) for _ in range(adjectives))
            words.append(str(rng.choice(_WORDS["NOUN"])))
            noun = len(words)  # 1-based position of the noun
            head.extend([noun] * (adjectives + 1) + [-1])  # the noun's head is the verb
            rel.extend(["det"] + ["amod"] * adjectives + [role])
            assert len(words) - start == adjectives + 2

        phrase("nsubj", words, head, rel)
        words.append(str(rng.choice(_WORDS["VERB"])))
        verb = len(words)
        head.append(0)
        rel.append("root")
        phrase("obj", words, head, rel)
        if rng.random() < 0.5:
            words.append(str(rng.choice(_WORDS["ADV"])))
            head.append(verb)
            rel.append("advmod")
        words.append(".")
        head.append(verb)
        rel.append("punct")
        forms.append(words)
        heads.append([verb if h == -1 else h for h in head])
        rels.append(rel)
    frame = _table(heads, rels)
    column = np.empty(n, dtype=object)
    column[:] = forms
    frame["form"] = column
    return frame


def test_the_toy_treebank_is_made_of_trees() -> None:
    table = toy_treebank(np.random.default_rng(0), 50)
    assert all(_is_tree(h) for h in table["head"])
    assert all(_is_tree(random_tree(np.random.default_rng(s), 7, leaves=2)) for s in range(20))


def test_learns_a_generated_treebank_through_the_token_encoder() -> None:
    rng = np.random.default_rng(0)
    train, test = toy_treebank(rng, 300), toy_treebank(rng, 100)
    tokens = TokensInput(TokensParams(min_frequency=1))
    tokens.fit(train, SOURCE, None)
    task = fit_task(
        Task("dep", "dependency", ["head", "deprel"]), train, np.arange(len(train)), SOURCE
    )
    cfg = ModelConfig.model_validate(
        {"encoder": {"name": "tokens", "word_dim": 32, "char_dim": 0, "width": 64, "layers": 1}}
    )
    model = build_model([task], tokens.input_spec, cfg, seed=0)
    inputs = tokens.transform(train, SOURCE, None)
    y, m = encode_targets(task, train, SOURCE)
    loss_fn = TaskLoss(task)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(3):
        for rows in torch.randperm(len(train), generator=g).split(16):
            out = model({k: v[rows] for k, v in inputs.items()})["dep"]
            loss = loss_fn(out, y[rows], m[rows])
            assert loss is not None
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        out = model(tokens.transform(test, SOURCE, None))["dep"]
    ty, tm = encode_targets(task, test, SOURCE)
    values = compute_metrics(task, out, ty, tm)
    # Chance is about 1 / 8 per word; the grammar fixes every head from the tags.
    assert values["uas"] > 0.95 and values["las"] > 0.95, values


def _write_conllu(path: Path, table: pd.DataFrame) -> None:
    lines: list[str] = []
    columns = zip(table["form"], table["head"], table["deprel"], strict=True)
    for s, (forms, heads, rels) in enumerate(columns):
        lines.append(f"# sent_id = s{s}")
        for i, (form, head, rel) in enumerate(zip(forms, heads, rels, strict=True), start=1):
            lines.append(f"{i}\t{form}\t{form}\t_\t_\t_\t{head}\t{rel}\t_\t_")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_a_parser_trains_saves_and_predicts_trees_through_the_pipeline(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for name, n in (("train", 300), ("dev", 40), ("test", 60)):
        _write_conllu(tmp_path / f"{name}.conllu", toy_treebank(rng, n))
    cfg = config_from_dict(
        {
            "seed": 0,
            "baselines": False,
            "data": {
                "path": "train.conllu",
                "input": {"name": "tokens", "column": "form", "min_frequency": 1},
                "split": {"method": "files", "val_path": "dev.conllu", "test_path": "test.conllu"},
            },
            "tasks": [{"name": "dep", "kind": "dependency", "target": ["head", "deprel"]}],
            "model": {
                "encoder": {
                    "name": "tokens",
                    "word_dim": 32,
                    "char_dim": 0,
                    "width": 64,
                    "layers": 1,
                },
                "head": {"widths": []},
            },
            "train": {"epochs": 4, "batch_size": 16, "lr": 5e-3, "progress": False},
        },
        base_dir=tmp_path,
    )
    result = polytask.run(cfg, out=tmp_path / "run", quiet=True)
    assert result.metrics["dep"]["uas"] > 0.95 and result.metrics["dep"]["las"] > 0.95
    predictor = polytask.load(tmp_path / "run" / "model")
    test = read_conllu(tmp_path / "test.conllu")
    assert predictor.evaluate(test)["dep"]["las"] == pytest.approx(
        result.metrics["dep"]["las"], abs=1e-6
    )
    fresh = pd.DataFrame({"form": ["the big dog sees a cat often .", "a man finds this tree ."]})
    predicted = predictor.predict(fresh)
    assert predicted["dep.head"].tolist() == [[3, 3, 4, 0, 6, 4, 4, 4], [2, 3, 0, 5, 3, 3]]
    assert predicted["dep.deprel"].tolist()[1] == ["det", "nsubj", "root", "det", "obj", "punct"]
