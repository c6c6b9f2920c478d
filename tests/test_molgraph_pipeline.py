"""Molecular graphs end to end: the ``smiles`` input with ``features = "graph"`` (padded graph
blocks per example, cached featurisation), the ``dmpnn`` and ``gin`` encoders through the
public API (every architecture, every balancer, fine-tuning with the message passing frozen,
distillation) and save/load + predict; the ONNX export is in tests/test_export_graph.py.

The featurisation's hand counts and the encoders' own properties (batching, permutation
invariance at the module level, export of the bare module) are in tests/test_molgraph.py;
here the same properties are checked through the input processor and the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import polytask
from polytask import config_from_dict, run
from polytask.balance import BALANCERS
from polytask.config import RunConfig
from polytask.data import molgraph as mg
from polytask.data.chem import DESCRIPTORS
from polytask.data.inputs import smiles as smiles_module
from polytask.data.inputs.base import build_input
from polytask.data.spec import InputSpec
from polytask.errors import ConfigError, DataError, PolytaskError
from polytask.models.architectures import ARCHITECTURES
from polytask.models.config import ModelConfig
from polytask.models.model import build_model
from polytask.run.pipeline import RunResult
from polytask.studies.finetune import finetune
from polytask.tasks import Task

Chem = pytest.importorskip("rdkit.Chem")
RDBase = pytest.importorskip("rdkit.rdBase")
pytestmark = pytest.mark.usefixtures("torch_single_thread")


def graph_input(**params: Any) -> smiles_module.SmilesInput:
    processor = build_input("smiles", {"features": "graph", **params})
    assert isinstance(processor, smiles_module.SmilesInput)
    return processor


def frame(smiles: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame({"smiles": pd.Series(smiles, dtype=object)})


# ---------------------------------------------------------------------------------------------
# The input: padded blocks, hand-counted


def test_hand_counted_graphs_through_the_input() -> None:
    # Pyridinium (aromatic ring, +1 on N), cyclopropane (saturated ring), nitromethane
    # (charge-separated N+ / O-, no ring).
    processor = graph_input()
    df = frame(["c1cc[nH+]cc1", "C1CC1", "C[N+](=O)[O-]"])
    processor.fit(df, "t", None)
    out = processor.transform(df, "t")
    assert set(out) == set(mg.GRAPH_KEYS)  # no molecule-level block without descriptors
    assert out["graph_sizes"].tolist() == [[6, 12], [3, 6], [4, 6]]
    atoms, bonds = out["atom_codes"], out["bond_codes"]
    charge = mg.FORMAL_CHARGES.index
    # Pyridinium: 5 C and 1 N (z - 1 = 5, 6), all aromatic; the N carries +1.
    assert sorted(atoms[0, :6, 0].tolist()) == [5, 5, 5, 5, 5, 6]
    assert atoms[0, :6, 6].tolist() == [1] * 6
    assert atoms[0, 3, 2].item() == charge(1) and atoms[0, 0, 2].item() == charge(0)
    # Aromatic bonds (type 3), conjugated, in ring.
    assert bonds[0, :12, :3].tolist() == [[3, 1, 1]] * 12
    # Cyclopropane: single bonds in a ring, not conjugated; SP3 carbons with 2 H.
    assert bonds[1, :6, :3].tolist() == [[0, 0, 1]] * 6
    assert atoms[1, :3, 4].tolist() == [2, 2, 2] and atoms[1, :3, 6].tolist() == [0, 0, 0]
    # Nitromethane: N +1, one O -1, the other 0; no bond in a ring.
    nitro = [charge(0), charge(1), charge(0), charge(-1)]
    assert [atoms[2, i, 2].item() for i in range(4)] == nitro
    assert bonds[2, :6, 2].tolist() == [0] * 6
    spec = processor.input_spec
    assert (spec.kind, spec.n_numeric) == ("graph", 0)


def test_padded_batches_equal_gathering_those_molecules() -> None:
    smiles = ["c1ccccc1O", "CC(=O)[O-].[Na+]", None, "C[C@H](N)C(=O)O", "[NH4+]", "C1CC1"]
    store = mg.featurise_graphs(smiles)
    padded = {k: torch.from_numpy(v) for k, v in store.padded().items()}
    rows = torch.tensor([3, 0, 2, 4, 1, 1, 5])  # any order, repeats, an unparsed one
    flat = mg.unpad(*(padded[k].index_select(0, rows) for k in mg.GRAPH_KEYS))
    ref = store.gather(rows.numpy())
    expected = (
        ref.atom_features,
        ref.bond_features,
        ref.edge_index,
        ref.reverse,
        ref.graph_of_atom,
        ref.atoms_per_graph,
    )
    for got, want in zip(flat, expected, strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)
    # One at a time gives the same rows as the batch.
    single = [mg.unpad(*(padded[k][i : i + 1] for k in mg.GRAPH_KEYS))[0] for i in rows]
    assert torch.equal(torch.cat(single), flat[0])


def test_descriptors_and_unparsed_flag_form_the_molecule_block() -> None:
    processor = graph_input(descriptors=True, invalid="missing")
    df = frame(["CCO", "not a smiles", "c1ccccc1"])
    processor.fit(df, "t", None)
    out = processor.transform(df, "t")
    width = len(DESCRIPTORS) + 1
    assert out["descriptors"].shape == (3, width)
    assert processor.input_spec == InputSpec(kind="graph", n_numeric=width)
    assert out["descriptors"][:, -1].tolist() == [0.0, 1.0, 0.0]
    assert out["graph_sizes"][1].tolist() == [0, 0]
    # Standardised on the parsed training rows: mean 0 over them.
    parsed = out["descriptors"][[0, 2], :-1]
    assert torch.allclose(parsed.mean(0), torch.zeros(width - 1), atol=1e-5)


def test_unreadable_smiles_is_one_line_naming_the_row() -> None:
    processor = graph_input()
    with pytest.raises(DataError) as info:
        processor.fit(frame(["CCO", "C1CC"]), "train.csv", None)
    message = str(info.value)
    assert "\n" not in message
    assert "train.csv: column 'smiles', row 1 holds 'C1CC'" in message


def test_graph_cache_is_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    df = frame(["CCO", "c1ccccc1", "CC(=O)O"])
    first = graph_input(cache_dir=str(tmp_path)).transform(df, "t")
    assert len(list(tmp_path.glob("smiles-*-graph1.npz"))) == 1

    def refuse(smiles: object) -> mg.MolGraphStore:
        raise AssertionError("featurised again despite the cache")

    monkeypatch.setattr(smiles_module, "featurise_graphs", refuse)
    again = graph_input(cache_dir=str(tmp_path)).transform(df, "t")
    assert all(torch.equal(first[k], again[k]) for k in mg.GRAPH_KEYS)
    # A damaged cache file is a one-line error naming it.
    (path,) = tmp_path.glob("smiles-*-graph1.npz")
    path.write_bytes(b"not an npz")
    with pytest.raises(PolytaskError, match="not a readable molecular graph cache"):
        graph_input(cache_dir=str(tmp_path)).transform(df, "t")


# ---------------------------------------------------------------------------------------------
# Encoders through the model


def tasks_of(spec: InputSpec) -> list[Task]:
    return [Task("n_count", "regression", target="n_count"), Task("ring", "binary", target="ring")]


@pytest.mark.parametrize("encoder", ["dmpnn", "gin"])
def test_embedding_is_invariant_to_atom_order(encoder: str) -> None:
    mol = Chem.MolFromSmiles("CC(=O)Nc1ccc(O)cc1")  # paracetamol
    order = list(range(mol.GetNumAtoms()))
    np.random.default_rng(0).shuffle(order)
    shuffled = Chem.RenumberAtoms(mol, order)
    store = mg.featurise_mols([mol, shuffled])
    inputs = {k: torch.from_numpy(v) for k, v in store.padded().items()}
    model = build_model(
        tasks_of(InputSpec(kind="graph")),
        InputSpec(kind="graph"),
        ModelConfig.model_validate({"encoder": {"name": encoder, "hidden": 32}}),
        seed=0,
    ).eval()
    with torch.no_grad():
        z = model.represent(inputs)
    assert not torch.equal(inputs["atom_codes"][0], inputs["atom_codes"][1])
    torch.testing.assert_close(z[0], z[1], rtol=1e-5, atol=1e-5)


#: Architectures that reach inside the encoder's layers (an MLP's, a CNN's stages) and refuse
#: any other encoder in one line; every other one takes the molecule embedding as it is.
LAYERWISE = {"cross_stitch": "only the 'mlp' encoder", "mtan": "the 'cnn' encoder"}


@pytest.mark.parametrize("architecture", ARCHITECTURES.names())
def test_every_architecture_reads_graphs(architecture: str) -> None:
    spec = InputSpec(kind="graph", n_numeric=2)
    store = mg.featurise_graphs(["CCO", "c1ccccc1N", "[NH4+]"])
    inputs = {k: torch.from_numpy(v) for k, v in store.padded().items()}
    inputs["descriptors"] = torch.randn(3, 2)
    cfg = ModelConfig.model_validate(
        {"encoder": {"name": "dmpnn", "hidden": 16}, "architecture": {"name": architecture}}
    )
    if architecture in LAYERWISE:
        with pytest.raises(ConfigError, match=LAYERWISE[architecture]) as info:
            build_model(tasks_of(spec), spec, cfg, seed=0)
        assert "\n" not in str(info.value)
        return
    model = build_model(tasks_of(spec), spec, cfg, seed=0)
    out = model(inputs)
    assert out["n_count"].shape == (3,) and out["ring"].shape == (3,)
    assert all(bool(torch.isfinite(v).all()) for v in out.values())
    # The descriptors enter after pooling: changing them changes the outputs.
    inputs["descriptors"] = inputs["descriptors"] + 1.0
    assert not torch.equal(model(inputs)["n_count"], out["n_count"])


def generated(n: int, seed: int) -> pd.DataFrame:
    """Random molecules from fragments; targets: the number of nitrogen atoms (regression) and
    whether an aromatic ring is present (binary)."""
    rng = np.random.default_rng(seed)
    fragments = ["C", "CC", "N", "O", "C(=O)", "N(C)", "c1ccccc1", "C1CCNCC1", "C#N"]
    smiles, mols = [], []
    quiet = RDBase.BlockLogs()  # noqa: F841  (RDKit logs while the object lives)
    while len(smiles) < n:
        text = "".join(rng.choice(fragments, size=rng.integers(2, 6)))
        # Some joins exceed a valence (N(C) after a branch): drawn again, never logged.
        mol = Chem.MolFromSmiles(text, sanitize=False)
        if mol is not None and Chem.SanitizeMol(mol, catchErrors=True) == 0:
            smiles.append(text)
            mols.append(mol)
    return pd.DataFrame(
        {
            "smiles": smiles,
            "n_count": [sum(a.GetSymbol() == "N" for a in m.GetAtoms()) for m in mols],
            "ring": [int(any(a.GetIsAromatic() for a in m.GetAtoms())) for m in mols],
        }
    )


def raw_config(encoder: str, epochs: int = 25, **extra: Any) -> dict[str, Any]:
    return {
        "seed": 0,
        "baselines": False,
        "data": {
            "input": {"name": "smiles", "features": "graph"},
            "split": {"method": "random", "val": 0.15, "test": 0.15},
        },
        "tasks": [
            {"name": "n_count", "kind": "regression", "target": "n_count"},
            {"name": "ring", "kind": "binary", "target": "ring"},
        ],
        "model": {"encoder": {"name": encoder, "hidden": 32}, "head": {"widths": [32]}},
        "train": {
            "epochs": epochs,
            "batch_size": 32,
            "lr": 3e-3,
            "patience": None,
            "progress": False,
        },
        **extra,
    }


@pytest.fixture(scope="module")
def molecules() -> pd.DataFrame:
    return generated(400, seed=0)


@pytest.fixture(scope="module", params=["dmpnn", "gin"])
def trained(
    request: pytest.FixtureRequest,
    molecules: pd.DataFrame,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, RunResult, Path]:
    out = tmp_path_factory.mktemp(request.param) / "run"
    result = run(config_from_dict(raw_config(request.param)), frame=molecules, out=out, quiet=True)
    return request.param, result, out


def test_encoders_learn_a_generated_task(trained: tuple[str, RunResult, Path]) -> None:
    # A predictor of the mean scores R2 = 0 and AUROC 0.5; the N count is a sum over atoms
    # and the aromatic flag is an atom feature, so both are learnable exactly.
    encoder, result, _ = trained
    assert result.metrics["n_count"]["r2"] > 0.9, (encoder, result.metrics)
    assert result.metrics["ring"]["auroc"] > 0.97, (encoder, result.metrics)


def test_saved_model_predicts_the_same(trained: tuple[str, RunResult, Path]) -> None:
    _, result, out = trained
    rows = generated(20, seed=1)[["smiles"]]
    loaded = polytask.load(out / "model")
    assert loaded.input_spec.kind == "graph"
    pd.testing.assert_frame_equal(loaded.predict(rows), result.predictor.predict(rows))


@pytest.mark.parametrize("name", BALANCERS.names())
def test_every_balancer_trains_a_graph_model(name: str, molecules: pd.DataFrame) -> None:
    # Settings some methods cannot run without (as in test_distill.py): GradDrop needs the
    # per-example gradient matrix (representation mode: the molecule embedding is the shared
    # representation); EPO a preference; COSMOS a preference-conditioned model (FiLM on the
    # normalised embedding, since input conditioning reads table or image features only).
    needs: dict[str, dict[str, Any]] = {
        "graddrop": {"mode": "representation"},
        "epo": {"preference": [0.5, 0.5]},
    }
    raw = raw_config("dmpnn", epochs=1, balancer={"name": name, **needs.get(name, {})})
    raw["model"]["encoder"]["hidden"] = 8
    if name == "cosmos":  # FiLM modulates the normalised molecule embedding
        raw["model"]["preference_conditioning"] = "film"
        raw["model"]["encoder"]["norm"] = "layer"
    result = run(config_from_dict(raw), frame=molecules.iloc[:96], quiet=True)
    losses = result.fit.history[0].train_loss
    assert all(np.isfinite(v) for v in losses.values()), (name, losses)
    assert np.isfinite(result.metrics["n_count"]["mae"])


def test_finetune_freezes_the_message_passing(
    trained: tuple[str, RunResult, Path], molecules: pd.DataFrame, tmp_path: Path
) -> None:
    encoder, _, out = trained
    # A new task that is a function of what the base learned (as in test_finetune.py): the
    # frozen embeddings must carry it, a new head only reads it out.
    frame_b = molecules.assign(many_n=(molecules["n_count"] >= 2).astype(int))
    raw = {
        "seed": 1,
        "data": {},
        "tasks": [{"name": "many_n", "kind": "binary", "target": "many_n"}],
        "train": {"epochs": 8, "batch_size": 32, "lr": 3e-3, "progress": False},
    }
    before = polytask.load(out / "model").model.state_dict()
    result = finetune(
        out / "model", config_from_dict(raw), frame=frame_b, out=tmp_path / "ft", quiet=True
    )
    after = result.predictor.model.state_dict()
    shared = [k for k in before if ".encoder.graph." in k or k.startswith("architecture.encoder")]
    assert shared, sorted(before)[:5]
    assert all(torch.equal(before[k], after[k]) for k in shared), encoder
    # The new head learns on the frozen molecule embeddings.
    assert result.metrics["many_n"]["auroc"] > 0.9, result.metrics


def test_distilled_student_reads_graphs(
    trained: tuple[str, RunResult, Path], molecules: pd.DataFrame
) -> None:
    encoder, _, out = trained
    raw = raw_config(encoder, epochs=3, distill={"teachers": [str(out / "model")]})
    result = run(config_from_dict(raw), frame=molecules, quiet=True)
    assert np.isfinite(result.metrics["n_count"]["mae"])
    assert isinstance(config_from_dict(raw), RunConfig)
