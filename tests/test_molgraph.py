"""Molecular graphs (:mod:`polytask.data.molgraph`) and the D-MPNN and GIN encoders
(:mod:`polytask.models.mpnn`): hand-counted features, batching, permutation invariance,
learning a small generated task, save/load and ONNX export.

Feature columns (chemprop v1 layout) used in the hand counts below: atomic number ``z`` at
``z - 1`` (0..100, 100 = other), total degree at 101 + d, formal charge at 108 + position in
(-1, -2, 1, 2, 0), chiral tag at 114 + tag, number of Hs at 119 + n, hybridisation at 125 +
position in (SP, SP2, SP3, SP3D, SP3D2, other), aromatic at 131, mass / 100 at 132. Bonds:
type at 0..3 (single, double, triple, aromatic), conjugated 4, in ring 5, stereo at 6 + s.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from polytask.config_errors import Schema
from polytask.data import molgraph as mg
from polytask.errors import DataError
from polytask.models.mpnn import DMPNN, GIN, GINParams, GraphEncoder, MPNNParams

Chem = pytest.importorskip("rdkit.Chem")

RequireData = Callable[[str], Path]


def nonzero(row: torch.Tensor) -> list[int]:
    return [int(i) for i in torch.nonzero(row).flatten()]


def graph(smiles: str) -> mg.MolGraphBatch:
    store = mg.featurise_graphs([smiles])
    assert store.parsed.tolist() == [True]
    return store.all()


# ---------------------------------------------------------------------------------------------
# Featurisation, hand-counted


def test_dimensions_match_chemprop() -> None:
    assert (mg.ATOM_DIM, mg.BOND_DIM) == (133, 13)


def test_benzene_aromatic_ring() -> None:
    g = graph("c1ccccc1")
    assert g.atom_features.shape == (6, 133) and g.bond_features.shape == (12, 13)
    # Carbon, degree 3 (2 C + 1 H), charge 0, no chirality, 1 H, SP2, aromatic, mass.
    for row in g.atom_features:
        assert nonzero(row) == [5, 104, 112, 114, 120, 126, 131, 132]
        assert row[132].item() == pytest.approx(0.12011, abs=1e-6)
    # Aromatic, conjugated, in ring, no stereo.
    for row in g.bond_features:
        assert nonzero(row) == [3, 4, 5, 6]
    # Each atom of the ring has 2 outgoing and 2 incoming directed bonds.
    assert torch.bincount(g.edge_index[0]).tolist() == [2] * 6
    assert torch.bincount(g.edge_index[1]).tolist() == [2] * 6


def test_acetate_formal_charge_and_conjugation() -> None:
    g = graph("CC(=O)[O-]")
    assert g.atom_features.shape[0] == 4 and g.bond_features.shape[0] == 6
    methyl, carbonyl_c, oxo, oxide = (nonzero(r) for r in g.atom_features)
    assert methyl == [5, 105, 112, 114, 122, 127, 132]  # degree 4, 3 H, SP3
    assert carbonyl_c == [5, 104, 112, 114, 119, 126, 132]  # degree 3, 0 H, SP2
    assert oxo == [7, 102, 112, 114, 119, 126, 132]
    assert oxide == [7, 102, 108, 114, 119, 126, 132]  # charge -1 at column 108
    # C-C single (not conjugated), C=O double conjugated, C-O(-) single conjugated; each twice.
    bonds = [nonzero(r) for r in g.bond_features]
    assert bonds == [[0, 6]] * 2 + [[1, 4, 6]] * 2 + [[0, 4, 6]] * 2


def test_ethanol_hydrogen_counts() -> None:
    g = graph("CCO")
    hs = g.atom_features[:, 119:125].argmax(dim=1).tolist()
    assert hs == [3, 2, 1]
    assert nonzero(g.atom_features[2]) == [7, 103, 112, 114, 120, 127, 132]
    assert g.atom_features[2, 132].item() == pytest.approx(0.15999, abs=1e-4)
    assert [nonzero(r) for r in g.bond_features] == [[0, 6]] * 4


def test_ammonium_single_charged_atom_without_bonds() -> None:
    g = graph("[NH4+]")
    assert nonzero(g.atom_features[0]) == [6, 105, 110, 114, 123, 127, 132]
    assert g.bond_features.shape == (0, 13) and g.edge_index.shape == (2, 0)
    assert g.reverse.shape == (0,) and g.graph_of_atom.tolist() == [0]


def test_salt_with_two_fragments() -> None:
    g = graph("CC(=O)[O-].[Na+]")
    assert g.atom_features.shape[0] == 5 and g.bond_features.shape[0] == 6
    # Sodium: z = 11, degree 0, charge +1, no H, hybridisation S (not in chemprop's list).
    assert nonzero(g.atom_features[4]) == [10, 101, 110, 114, 119, 130, 132]
    assert 4 not in g.edge_index.flatten().tolist()


def test_stereo_and_chirality() -> None:
    butene = graph("C/C=C/C")
    assert nonzero(butene.bond_features[2]) == [1, 9]  # double, STEREOE (3)
    alanine = graph("N[C@@H](C)C(=O)O")
    assert alanine.atom_features[1, 115].item() == 1.0  # CHI_TETRAHEDRAL_CW (1)


def test_reverse_bonds_swap_endpoints() -> None:
    store = mg.featurise_graphs(["c1ccccc1O", "[Na+].[Cl-]", "CC(=O)[O-]", "C1CC1N"])
    b = store.all()
    rev = b.reverse
    assert torch.equal(rev[rev], torch.arange(len(rev)))
    assert not torch.equal(rev, torch.arange(len(rev)))
    assert torch.equal(b.edge_index[0, rev], b.edge_index[1])
    assert torch.equal(b.edge_index[1, rev], b.edge_index[0])
    assert torch.equal(b.bond_features[rev], b.bond_features)
    # No bond crosses from one molecule to another.
    assert torch.equal(b.graph_of_atom[b.edge_index[0]], b.graph_of_atom[b.edge_index[1]])


def test_blank_and_invalid_smiles_are_reported() -> None:
    store = mg.featurise_graphs(["CCO", "", None, "not a smiles", "C"])
    assert store.parsed.tolist() == [True, False, False, False, True]
    assert store.failed == [1, 2, 3]
    b = store.all()
    assert b.n_graphs == 5 and b.atoms_per_graph.tolist() == [3, 0, 0, 0, 1]


def test_gather_equals_featurising_those_rows() -> None:
    smiles = ["CCO", "c1ccccc1", "[Na+].[Cl-]", "", "CC(=O)[O-]", "C", "N1CCOCC1", "C#N"]
    store = mg.featurise_graphs(smiles)
    rows = [6, 2, 2, 0, 3, 7, 4]
    got = store.gather(rows)
    want = mg.featurise_graphs([smiles[i] for i in rows]).all()
    for name in ("atom_features", "bond_features", "edge_index", "reverse", "graph_of_atom"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.n_graphs == want.n_graphs == 7
    # Per-molecule stores batched together give the same batch too.
    single = mg.batch_graphs([mg.featurise_graphs([smiles[i]]) for i in rows])
    for name in ("atom_features", "bond_features", "edge_index", "reverse", "graph_of_atom"):
        assert torch.equal(getattr(single, name), getattr(want, name)), name
    empty = store.gather([])
    assert empty.n_graphs == 0 and empty.atom_features.shape == (0, 133)
    with pytest.raises(IndexError, match=r"0\.\.7"):
        store.gather([8])


# ---------------------------------------------------------------------------------------------
# Encoders: D-MPNN and GIN

KINDS = ["dmpnn", "gin"]


def encoder(
    kind: str = "dmpnn", seed: int = 0, n_descriptors: int = 0, **params: object
) -> GraphEncoder:
    """An encoder of width 32 (GIN: 32 per layer), in eval mode, seeded."""
    torch.manual_seed(seed)
    values = {"hidden": 32, **params}
    model: GraphEncoder
    if kind == "dmpnn":
        model = DMPNN(MPNNParams.model_validate(values), n_descriptors=n_descriptors)
    else:
        model = GIN(GINParams.model_validate(values), n_descriptors=n_descriptors)
    return model.eval()


MIXED = ["c1ccccc1O", "[Na+].[Cl-]", "CC(=O)[O-].[Na+]", "C", "CCN(CC)C(=O)c1ccc(Cl)cc1", "", "O"]


def test_params_are_strict_schemas() -> None:
    assert issubclass(MPNNParams, Schema) and issubclass(GINParams, Schema)
    assert MPNNParams().depth == 3 and MPNNParams().hidden == 300
    with pytest.raises(ValueError, match="depth"):
        MPNNParams.model_validate({"depth": 0})
    with pytest.raises(ValueError, match="readout"):
        GINParams.model_validate({"readout": "max"})
    assert encoder("dmpnn").out_dim == 32 and encoder("gin", depth=2).out_dim == 64


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("readout", ["mean", "sum"])
def test_batch_equals_one_at_a_time(kind: str, readout: str) -> None:
    model = encoder(kind, readout=readout)
    store = mg.featurise_graphs(MIXED)
    with torch.no_grad():
        together = model(store.all())
        alone = torch.cat([model(store.gather([i])) for i in range(len(MIXED))])
    assert together.shape == (len(MIXED), model.out_dim)
    assert torch.allclose(together, alone, atol=1e-6)
    assert torch.isfinite(together).all()
    assert together[5].abs().max().item() == 0.0  # the blank SMILES: no atoms, zero embedding


@pytest.mark.parametrize("kind", KINDS)
def test_message_passing_is_invariant_to_atom_order(kind: str) -> None:
    model = encoder(kind, depth=4)
    rng = random.Random(0)
    mols = [
        Chem.MolFromSmiles(s)
        for s in ["CCN(CC)C(=O)c1ccc(Cl)cc1", "OC1CCCCC1N", "CC(=O)[O-].[Na+]"]
    ]
    shuffled = []
    for mol in mols:
        order = list(range(mol.GetNumAtoms()))
        rng.shuffle(order)
        shuffled.append(Chem.RenumberAtoms(mol, order))
    a, b = mg.featurise_mols(mols).all(), mg.featurise_mols(shuffled).all()
    assert not torch.equal(a.atom_features, b.atom_features)  # really in another order
    with torch.no_grad():
        assert torch.allclose(model(a), model(b), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_descriptors_are_concatenated_after_pooling(kind: str) -> None:
    model = encoder(kind, n_descriptors=3, hidden=16, depth=1)
    batch = mg.featurise_graphs(["CCO", "c1ccccc1"]).all()
    descriptors = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out = model(batch, descriptors)
    assert model.out_dim == 19 and out.shape == (2, 19)
    assert torch.equal(out[:, 16:], descriptors)
    assert torch.equal(out[:, :16], model(batch, descriptors * 0)[:, :16])
    with pytest.raises(ValueError, match="expects 3"):
        model(batch)
    with pytest.raises(ValueError, match="have 2 columns"):
        model(batch, descriptors[:, :2])


#: Fragments joined head to tail into a generated molecule (each closes its own rings).
FRAGMENTS = ["C", "CC", "O", "N", "C(=O)", "c1ccccc1", "C1CCNCC1", "c1ccncc1", "C(N)", "OC", "S"]


def generated_molecules(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` random fragment chains and their number of nitrogen atoms (counted by RDKit)."""
    rng = random.Random(seed)
    smiles = ["".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(2, 6))) for _ in range(n)]
    counts = [sum(a.GetSymbol() == "N" for a in Chem.MolFromSmiles(s).GetAtoms()) for s in smiles]
    return smiles, np.array(counts, dtype=np.float32)


@pytest.mark.usefixtures("torch_single_thread")
@pytest.mark.parametrize("kind", KINDS)
def test_encoder_learns_nitrogen_count(kind: str) -> None:
    train_smiles, train_y = generated_molecules(300, seed=1)
    test_smiles, test_y = generated_molecules(100, seed=2)
    train, test = mg.featurise_graphs(train_smiles), mg.featurise_graphs(test_smiles)
    assert train.parsed.all() and test.parsed.all()
    model = encoder(kind, readout="sum").train()
    head = torch.nn.Linear(model.out_dim, 1)
    optimiser = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-3)
    y = torch.from_numpy(train_y)
    rng = np.random.default_rng(0)
    for _ in range(20):  # epochs of mini-batches of 50 gathered from the store
        for rows in np.array_split(rng.permutation(len(train)), 6):
            loss = torch.nn.functional.mse_loss(head(model(train.gather(rows))).squeeze(1), y[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        pred = head(model.eval()(test.all())).squeeze(1).numpy()
    mae = float(np.abs(pred - test_y).mean())
    constant = float(np.abs(np.median(train_y) - test_y).mean())
    assert constant > 0.5
    # Measured: MAE 0.02 (D-MPNN) and 0.11 (GIN) against 0.85 for the constant (median).
    assert mae < 0.25 * constant, (mae, constant)


# ---------------------------------------------------------------------------------------------
# Save/load and export


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip(kind: str) -> None:
    model = encoder(kind)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    other = encoder(kind, seed=1)
    batch = mg.featurise_graphs(MIXED).all()
    with torch.no_grad():
        assert not torch.allclose(model(batch), other(batch))
        other.load_state_dict(torch.load(buffer, weights_only=True))
        assert torch.equal(model(batch), other(batch))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's own
@pytest.mark.parametrize(("kind", "dynamo"), [("dmpnn", False), ("gin", False), ("dmpnn", True)])
def test_onnx_export_matches_torch(kind: str, dynamo: bool, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    model = encoder(kind)

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            atoms: torch.Tensor,
            bonds: torch.Tensor,
            edge_index: torch.Tensor,
            reverse: torch.Tensor,
            graph_of_atom: torch.Tensor,
            atoms_per_graph: torch.Tensor,
        ) -> torch.Tensor:
            return self.model.forward_tensors(
                atoms, bonds, edge_index, reverse, graph_of_atom, atoms_per_graph
            )

    def inputs(b: mg.MolGraphBatch) -> tuple[torch.Tensor, ...]:
        return (
            b.atom_features,
            b.bond_features,
            b.edge_index,
            b.reverse,
            b.graph_of_atom,
            b.atoms_per_graph,
        )

    names = ["atoms", "bonds", "edge_index", "reverse", "graph_of_atom", "atoms_per_graph"]
    path = tmp_path / "mpnn.onnx"
    example = mg.featurise_graphs(MIXED[:3]).all()
    if dynamo:
        a, e, g = torch.export.Dim("a"), torch.export.Dim("e"), torch.export.Dim("g")
        shapes = ({0: a}, {0: e}, {1: e}, {0: e}, {0: a}, {0: g})
        program = torch.onnx.export(
            Wrapper().eval(), inputs(example), dynamo=True, dynamic_shapes=shapes
        )
        assert program is not None
        program.save(str(path))
    else:
        axes = {"atoms": {0: "a"}, "bonds": {0: "e"}, "edge_index": {1: "e"}, "reverse": {0: "e"}}
        axes |= {"graph_of_atom": {0: "a"}, "atoms_per_graph": {0: "g"}, "embedding": {0: "g"}}
        torch.onnx.export(
            Wrapper().eval(),
            inputs(example),
            str(path),
            dynamo=False,
            input_names=names,
            output_names=["embedding"],
            dynamic_axes=axes,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # Another batch, of other sizes, than the one exported with.
    batch = mg.featurise_graphs([*MIXED, "CCN(CC)CC", "c1ccc2ccccc2c1"]).all()
    feeds = {n: t.numpy() for n, t in zip(names, inputs(batch), strict=True)}
    # The exporter drops inputs the graph does not read (GIN: the bond features, reverse).
    feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
    (got,) = session.run(None, feeds)
    with torch.no_grad():
        want = model(batch).numpy()
    assert got.shape == (9, model.out_dim)
    np.testing.assert_allclose(got, want, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Real data


def test_tox21_graph_sizes_match_rdkit(require_data: RequireData) -> None:
    root = require_data("tox21")
    smiles = pd.read_csv(root / "molecules" / "tox21.csv")["smiles"].tolist()[:2000]
    started = time.perf_counter()
    store = mg.featurise_graphs(smiles)
    elapsed = time.perf_counter() - started
    mols = [Chem.MolFromSmiles(s) for s in smiles]
    atoms = [m.GetNumAtoms() if m else 0 for m in mols]
    bonds = [2 * m.GetNumBonds() if m else 0 for m in mols]
    assert np.diff(store.atom_offsets).tolist() == atoms
    assert np.diff(store.bond_offsets).tolist() == bonds
    assert store.parsed.tolist() == [m is not None for m in mols]
    assert elapsed < 60  # a hang guard only; the speed is measured in the report, not here


def test_store_save_and_load(tmp_path: Path) -> None:
    store = mg.featurise_graphs(["CCO", "", "c1ccccc1", "[Na+].[Cl-]"])
    path = tmp_path / "graphs.npz"
    store.save(path)
    loaded = mg.MolGraphStore.load(path)
    for name in ("atom_codes", "atom_mass", "bond_codes", "edge_index", "parsed"):
        assert np.array_equal(getattr(loaded, name), getattr(store, name)), name
        assert getattr(loaded, name).dtype == getattr(store, name).dtype, name
    assert torch.equal(loaded.gather([2, 0]).atom_features, store.gather([2, 0]).atom_features)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DataError, match=r"other\.npz: not a molecular graph store .*'atom_codes'"):
        mg.MolGraphStore.load(tmp_path / "other.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match=r"text\.npz: not a molecular graph store"):
        mg.MolGraphStore.load(tmp_path / "text.npz")
