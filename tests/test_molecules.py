"""MoleculeNet Tox21 and QM8: raw tables, RDKit features, the registry entries and a short run.

Real-data tests read the shared copies (``molecules/tox21.csv``, ``molecules/qm8.csv.gz``) and
skip when they are absent (fail under ``CI=true``). Featurising all of Tox21 takes ~4 s, so it
happens once per module; QM8 (21,786 molecules, ~6 s) is featurised only on a truncated copy,
since its full raw table already checks the counts and the duplicate columns.
"""

from __future__ import annotations

import gzip
import hashlib
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polytask.config import config_from_dict
from polytask.data.datasets import DATASETS, load_dataset
from polytask.data.datasets import molecules as mol
from polytask.errors import DataError
from polytask.run.pipeline import run

Chem = pytest.importorskip("rdkit.Chem")
from rdkit.Chem import Descriptors, rdFingerprintGenerator  # noqa: E402

RequireData = Callable[[str], Path]
N_FEATURES = len(mol.DESCRIPTORS) + mol.DEFAULT_BITS


@pytest.fixture(scope="module")
def tox21(require_data: RequireData) -> tuple[pd.DataFrame, list[str]]:
    """The featurised Tox21 frame and the messages of the warnings raised while loading it."""
    root = require_data("tox21")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = load_dataset("tox21", root)
    return frame, [str(w.message) for w in caught]


# ---------------------------------------------------------------------------------------------
# Features


def test_fingerprint_of_ethanol_matches_rdkit() -> None:
    features = mol.featurise(["CCO", "c1ccccc1O"], n_bits=2048)
    assert features.shape == (2, N_FEATURES)
    bits = features[mol.fingerprint_columns(2048)].to_numpy()
    assert bits.dtype == np.uint8 and set(np.unique(bits)) <= {0, 1}
    # Reference: the unfolded Morgan identifiers of radius 2, folded by hand (id mod n_bits),
    # and the on-bits RDKit's bit-vector API gives for ethanol.
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2)
    for row, smiles in enumerate(["CCO", "c1ccccc1O"]):
        ids = generator.GetSparseCountFingerprint(Chem.MolFromSmiles(smiles)).GetNonzeroElements()
        assert sorted(np.flatnonzero(bits[row])) == sorted({i % 2048 for i in ids})
    assert list(np.flatnonzero(bits[0])) == [80, 222, 294, 807, 1057, 1410]


def test_fingerprint_width_is_configurable() -> None:
    features = mol.featurise(["CCO"], n_bits=64)
    columns = mol.fingerprint_columns(64)
    assert list(features.columns) == [*mol.DESCRIPTORS, *columns]
    assert columns[0] == "morgan_00" and columns[-1] == "morgan_63"
    ids = rdFingerprintGenerator.GetMorganGenerator(radius=2).GetSparseCountFingerprint(
        Chem.MolFromSmiles("CCO")
    )
    expected = sorted({i % 64 for i in ids.GetNonzeroElements()})
    assert list(np.flatnonzero(features[columns].to_numpy()[0])) == expected


def test_descriptors_match_rdkit() -> None:
    aspirin = "CC(=O)Oc1ccccc1C(=O)O"
    row = mol.featurise([aspirin, "[Na+].[Cl-]"]).iloc[0]
    m = Chem.MolFromSmiles(aspirin)
    assert row["MolWt"] == pytest.approx(Descriptors.MolWt(m))
    assert row["MolWt"] == pytest.approx(180.159, abs=1e-3)
    assert row["MolLogP"] == pytest.approx(Descriptors.MolLogP(m))
    assert row["TPSA"] == pytest.approx(63.6, abs=0.01)
    assert row["NumHDonors"] == 1 and row["NumHAcceptors"] == 3
    assert row["HeavyAtomCount"] == 13 and row["RingCount"] == 1
    assert row["NumAromaticRings"] == 1 and row["NumHeteroatoms"] == 4
    assert row["NumRotatableBonds"] == Descriptors.NumRotatableBonds(m) == 2
    # Strict definition: the amide C-N bond of paracetamol is not rotatable.
    paracetamol = mol.featurise(["CC(=O)Nc1ccc(O)cc1"]).iloc[0]
    assert paracetamol["NumRotatableBonds"] == 1
    assert row["FractionCSP3"] == pytest.approx(1 / 9)
    salt = mol.featurise(["[Na+].[Cl-]"]).iloc[0]
    assert salt["NumFragments"] == 2 and salt["FormalCharge"] == 0


def test_unparseable_smiles_named_by_featurise() -> None:
    with pytest.raises(DataError, match=r"row 1 \('C1CC'\)") as info:
        mol.featurise(["CCO", "C1CC", "not a molecule"])
    assert "2 of 3" in str(info.value) and "\n" not in str(info.value)


def test_missing_rdkit_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import` raise ImportError, as if RDKit were absent.
    for name in [m for m in sys.modules if m == "rdkit" or m.startswith("rdkit.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(DataError) as info:
        mol.featurise(["CCO"])
    message = str(info.value)
    assert "pip install 'polytask[chem]'" in message
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_entries() -> None:
    for name, tasks, kind in (
        ("tox21", mol.TOX21_TASKS, "binary"),
        ("qm8", mol.QM8_TASKS, "regression"),
    ):
        info = DATASETS[name]
        assert info.targets == dict.fromkeys(tasks, kind) and len(tasks) == 12
        assert info.ignore == ("smiles",) and info.group is None
        assert info.files[0].url.startswith("https://raw.githubusercontent.com/chemprop/")
        assert "MoleculeNet" in info.citation and "MIT" in info.citation
    assert len(set(mol.QM8_TASKS)) == 12


def test_checksums_match_shared_copies(require_data: RequireData) -> None:
    for name in ("tox21", "qm8"):
        root = require_data(name)
        remote = DATASETS[name].files[0]
        digest = hashlib.sha256((root / remote.relpath).read_bytes()).hexdigest()
        assert digest == remote.sha256, name


# ---------------------------------------------------------------------------------------------
# Tox21, real data


def test_tox21_raw_table(require_data: RequireData) -> None:
    table = mol.read_tox21(require_data("tox21"))
    assert table.shape == (7831, 13)
    labels = table[list(mol.TOX21_TASKS)]
    assert all(str(t) == "Int64" for t in labels.dtypes)
    assert labels.isna().to_numpy().mean() == pytest.approx(0.1705, abs=0.001)
    # 7.5% of the present labels are positive (7.8% averaged per assay, as the README says).
    values = labels.to_numpy(dtype=float, na_value=np.nan)
    assert float(np.nanmean(values)) == pytest.approx(0.0752, abs=0.001)
    assert float(np.nanmean(values, axis=0).mean()) == pytest.approx(0.0775, abs=0.001)


def test_tox21_loaded_frame(tox21: tuple[pd.DataFrame, list[str]]) -> None:
    frame, messages = tox21
    dropped = frame.attrs["dropped_smiles"]
    # RDKit 2024+ rejects the hypervalent aluminium salts (8 rows); older versions read some.
    assert len(frame) + len(dropped) == 7831 and len(dropped) <= 8
    assert all("[AlH3]" in s for s in dropped)
    if dropped:
        assert any(f"dropped {len(dropped)} of 7831 molecules" in m for m in messages)
    assert frame.shape[1] == 1 + 12 + N_FEATURES
    assert list(frame.columns[:13]) == ["smiles", *mol.TOX21_TASKS]
    assert list(frame.columns[13 : 13 + len(mol.DESCRIPTORS)]) == list(mol.DESCRIPTORS)
    assert isinstance(frame.index, pd.RangeIndex)
    missing = frame[list(mol.TOX21_TASKS)].isna().to_numpy().mean()
    assert 0.165 < missing < 0.175
    features = DATASETS["tox21"].feature_columns(frame)
    assert len(features) == N_FEATURES and "smiles" not in features
    assert not frame[list(mol.DESCRIPTORS)].isna().any().any()
    # Density of a 2048-bit ECFP4 on drug-like molecules: a few dozen bits per molecule.
    bits_per_molecule = frame[mol.fingerprint_columns()].to_numpy().sum(axis=1)
    assert 20 < bits_per_molecule.mean() < 40 and bits_per_molecule.min() >= 1


def _tox21_config(tasks: tuple[str, ...]) -> dict[str, object]:
    return {
        "seed": 0,
        "baselines": False,
        "data": {"ignore": ["smiles"], "split": {"method": "random", "val": 0.15, "test": 0.15}},
        "tasks": [{"name": t, "kind": "binary", "target": t} for t in tasks],
        "model": {"encoder": {"widths": [128], "dropout": 0.3}, "head": {"widths": []}},
        "train": {"epochs": 4, "batch_size": 128, "patience": None, "progress": False},
    }


def test_tox21_short_training_beats_threshold(
    tox21: tuple[pd.DataFrame, list[str]], torch_single_thread: None
) -> None:
    # 3,000 molecules, the 4 assays with the most positives, 4 epochs of a 128-unit MLP: mean
    # test AUROC 0.83-0.85 and no task below 0.79 over 5 sample/seed pairs (0.5 is chance).
    frame, _ = tox21
    tasks = ("NR-AhR", "SR-ARE", "SR-MMP", "SR-p53")
    sample = frame.sample(n=3000, random_state=0).reset_index(drop=True)
    result = run(config_from_dict(_tox21_config(tasks)), frame=sample, quiet=True)
    aurocs = [result.metrics[t]["auroc"] for t in tasks]
    assert statistics.mean(aurocs) > 0.78, aurocs
    assert min(aurocs) > 0.70, aurocs


# ---------------------------------------------------------------------------------------------
# QM8, real data


def test_qm8_duplicate_columns_dropped(require_data: RequireData) -> None:
    root = require_data("qm8")
    raw = pd.read_csv(root / mol.QM8_RELPATH)  # pandas renames the repeats E1-PBE0.1 ...
    assert raw.shape == (21786, 17)
    table = mol.read_qm8(root)
    assert table.shape == (21786, 13)
    assert list(table.columns) == ["smiles", *mol.QM8_TASKS]
    for name in ("E1-PBE0", "E2-PBE0", "f1-PBE0", "f2-PBE0"):
        assert np.array_equal(raw[name].to_numpy(), raw[f"{name}.1"].to_numpy())
        assert np.array_equal(table[name].to_numpy(), raw[name].to_numpy())
    assert (table[list(mol.QM8_TASKS)].dtypes == "float64").all()
    assert not table[list(mol.QM8_TASKS)].isna().any().any()
    # Energies sit near 0.22 Hartree; oscillator strengths are mostly near 0 with a long tail
    # (median < 0.013, max > 0.5): unlike distributions that the pipeline standardises per task.
    energies = table[[t for t in mol.QM8_TASKS if t.startswith("E")]]
    strengths = table[[t for t in mol.QM8_TASKS if t.startswith("f")]]
    assert energies.median().between(0.21, 0.26).all()
    assert (strengths.median() < 0.013).all() and (strengths.max() > 0.5).all()
    assert (table[list(mol.QM8_TASKS)].std().between(0.03, 0.08)).all()


def _qm8_copy(root: Path, dest: Path, rows: int, edit: Callable[[list[str]], None]) -> Path:
    """A data root holding the header and first ``rows`` lines of QM8, after ``edit``."""
    with gzip.open(root / mol.QM8_RELPATH, "rt") as handle:
        lines = [next(handle) for _ in range(rows + 1)]
    edit(lines)
    path = dest / mol.QM8_RELPATH
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as handle:
        handle.writelines(lines)
    return dest


def test_qm8_loads_through_registry(require_data: RequireData, tmp_path: Path) -> None:
    root = _qm8_copy(require_data("qm8"), tmp_path, 300, lambda lines: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every QM8 SMILES parses: nothing to warn about
        frame = load_dataset("qm8", root)
    assert frame.shape == (300, 1 + 12 + N_FEATURES)
    assert list(frame.columns[:13]) == ["smiles", *mol.QM8_TASKS]
    assert frame["HeavyAtomCount"].max() <= 8  # QM8 molecules have at most 8 heavy atoms
    assert frame.loc[0, "smiles"] == "[H]C([H])([H])[H]" and frame.loc[0, "MolWt"] == (
        pytest.approx(16.043, abs=1e-3)
    )


def test_qm8_differing_copy_is_an_error(require_data: RequireData, tmp_path: Path) -> None:
    def tamper(lines: list[str]) -> None:
        cells = lines[3].rstrip("\n").split(",")
        cells[9] = "0.5"  # the second E1-PBE0 column of data line 3 (file line 4)
        lines[3] = ",".join(cells) + "\n"

    root = _qm8_copy(require_data("qm8"), tmp_path, 20, tamper)
    with pytest.raises(DataError, match=r"'E1-PBE0' appears twice .*line 4") as info:
        mol.read_qm8(root)
    assert "\n" not in str(info.value)


def test_tox21_bad_label_named(tmp_path: Path) -> None:
    path = tmp_path / mol.TOX21_RELPATH
    path.parent.mkdir(parents=True)
    header = ",".join(["smiles", *mol.TOX21_TASKS])
    path.write_text(f"{header}\nCCO{',0' * 12}\nCCN,0,0,2{',' * 9}\n")
    with pytest.raises(DataError, match=r"'NR-AhR' should hold 0, 1 or blank but line 3"):
        mol.read_tox21(tmp_path)
