"""Data layouts people have (issue 21): one-vs-rest labels and per-task missing labels, the
run's recorded split (``splits.csv``, ``polytask evaluate RUN --split``) and group splits by
groups, ``.xlsx`` tables, and molecules from the user's own table (``smiles`` input)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import polytask
from conftest import run_cli, toml_text
from polytask import Task
from polytask.config import config_from_dict
from polytask.data import tables
from polytask.data.split import group_split, select_split, split_record
from polytask.data.tables import read_table
from polytask.data.targets import encode_targets, fit_task
from polytask.errors import ConfigError, DataError, PolytaskError
from polytask.run.directory import read_splits
from polytask.run.splits import evaluate_split

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def patients(n: int = 900, seed: int = 0) -> pd.DataFrame:
    """The README's patient table: ``readmitted`` in ``<30``, ``>30``, ``NO`` (driven by the
    features), ``time_in_hospital``, a unique ``encounter_id`` and repeated ``patient_id``."""
    rng = np.random.default_rng(seed)
    age = rng.normal(60, 12, n).round(1)
    visits = rng.poisson(2, n)
    ward = rng.choice(["icu", "surgery", "medicine"], n)
    score = 0.08 * (age - 60) + 0.9 * visits + 1.5 * (ward == "icu") - 2.5
    u = rng.random(n)
    p_early = 1 / (1 + np.exp(-score))
    readmitted = np.where(u < p_early, "<30", np.where(u < p_early + 0.3, ">30", "NO"))
    frame = pd.DataFrame(
        {
            "encounter_id": [f"e{i:05d}" for i in rng.permutation(n)],
            "patient_id": [f"p{i:03d}" for i in rng.integers(0, n // 3, n)],
            "age": age,
            "visits": visits,
            "ward": ward,
            "gender": rng.choice(["0", "1"], n),
            "readmitted": readmitted,
            "time_in_hospital": (3 + 0.05 * (age - 60) + 2 * (ward == "icu")).round(2)
            + rng.normal(0, 0.5, n).round(2),
        }
    )
    frame.loc[[3, 17, n - 1], "gender"] = "3"  # stray codes: missing for the gender task only
    frame.loc[[5, 40], "readmitted"] = "?"
    return frame


# -- one-vs-rest and per-task missing labels ------------------------------------------------
def test_positive_on_three_labels_is_one_vs_rest() -> None:
    df = pd.DataFrame({"y": ["<30", ">30", "NO", "NO", "<30", None]})
    task = fit_task(Task("r", "binary", "y", positive="<30"), df, np.arange(6), "t.csv")
    assert task.classes == ["not <30", "<30"]
    y, mask = encode_targets(task, df, "t.csv")
    assert y.tolist() == [1, 0, 0, 0, 1, 0] and mask.tolist() == [True] * 5 + [False]
    # A label never seen in training is negative at evaluation (one against the rest).
    y, _ = encode_targets(task, pd.DataFrame({"y": ["<30", "new"]}), "t.csv")
    assert y.tolist() == [1, 0]


def test_positive_list_and_two_labels() -> None:
    df = pd.DataFrame({"y": ["<30", ">30", "NO", "NO"]})
    task = fit_task(Task("r", "binary", "y", positive=["<30", ">30"]), df, np.arange(4), "t")
    assert task.classes == ["not (<30 | >30)", "<30 | >30"]
    assert encode_targets(task, df, "t")[0].tolist() == [1, 1, 0, 0]
    # Two labels and one positive: the classes stay the labels themselves, as before.
    two = pd.DataFrame({"y": ["a", "b", "a"]})
    task = fit_task(Task("r", "binary", "y", positive="a"), two, np.arange(3), "t")
    assert task.classes == ["b", "a"]
    assert encode_targets(task, two, "t")[0].tolist() == [1, 0, 1]


def test_one_vs_rest_errors_are_one_line() -> None:
    df = pd.DataFrame({"y": ["<30", ">30", "NO", "NO"]})
    with pytest.raises(DataError, match=r"positive label '<10' is not in column 'y'"):
        fit_task(Task("r", "binary", "y", positive="<10"), df, np.arange(4), "t")
    with pytest.raises(DataError, match="covers every label"):
        fit_task(Task("r", "binary", "y", positive=["<30", ">30", "NO"]), df, np.arange(4), "t")
    with pytest.raises(DataError, match="no positive label in the training rows"):
        fit_task(Task("r", "binary", "y", positive="<30"), df, np.arange(1, 4), "t")
    with pytest.raises(ConfigError, match="positive lists a label twice"):
        Task("r", "binary", "y", positive=["a", "a"])
    with pytest.raises(DataError, match=r"or positive = '...' for one label against the rest"):
        fit_task(Task("r", "binary", "y"), df, np.arange(4), "t")


def test_missing_labels_are_per_task() -> None:
    df = pd.DataFrame({"g": [0, 1, 3, 1, 0, "3", 3.0], "h": [0, 1, 3, 1, 0, 3, 3]})
    g = fit_task(Task("g", "binary", "g", missing=[3]), df, np.arange(7), "t")
    assert g.classes == ["0", "1"]
    y, mask = encode_targets(g, df, "t")
    assert mask.tolist() == [True, True, False, True, True, False, False]
    assert y[mask].tolist() == [0, 1, 1, 0]
    # The other task reading the same column keeps its 3s.
    h = fit_task(Task("h", "multiclass", "g"), df, np.arange(7), "t")
    assert h.classes == ["0", "1", "3"]
    r = fit_task(Task("r", "regression", "h", missing=["3"]), df, np.arange(7), "t")
    assert encode_targets(r, df, "t")[1].tolist() == [True, True, False, True, True, False, False]
    with pytest.raises(ConfigError, match="missing applies to label columns"):
        Task("s", "segmentation", "mask", missing=[255])


def test_readme_patient_example_trains_one_vs_rest() -> None:
    frame = patients()
    result = polytask.fit(
        frame,
        [
            Task("readmitted", "binary", target="readmitted", positive="<30", missing=["?"]),
            Task("gender", "binary", target="gender", missing=["3"]),
            Task("stay", "regression", target="time_in_hospital"),
        ],
        data_options={
            "group": "patient_id",
            "id": "encounter_id",
            "ignore": ["gender"],
            "split": {"method": "group", "val": 0.15, "test": 0.2},
        },
        model={"encoder": {"name": "mlp", "widths": [32]}},
        train={"epochs": 25, "batch_size": 64, "lr": 0.01, "progress": False},
        baselines=False,
        quiet=True,
    )
    tasks = {t.name: t for t in result.predictor.tasks}
    assert tasks["readmitted"].classes == ["not <30", "<30"]
    assert tasks["gender"].classes == ["0", "1"]
    assert result.metrics["readmitted"]["auroc"] > 0.8
    predicted = result.predictor.predict(frame.head(50))
    assert set(predicted["readmitted"].dropna()) <= {"not <30", "<30"}


# -- splits: recorded, evaluated, by groups -------------------------------------------------
def test_group_split_by_groups_takes_a_fraction_of_the_groups() -> None:
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 60, 42)  # very unequal subjects
    groups = pd.Series(np.repeat([f"s{i:02d}" for i in range(42)], sizes), name="subject")
    train, val, test = group_split(groups, 0.1, 0.15, seed=0, unit="groups")
    assert groups.iloc[val].nunique() == round(0.1 * 42) == 4
    assert groups.iloc[test].nunique() == round(0.15 * 42) == 6
    assert groups.iloc[train].nunique() == 32
    parts = [set(groups.iloc[rows]) for rows in (train, val, test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(train) + len(val) + len(test) == len(groups)
    # By rows (the default), 10% of the rows, whatever number of subjects that is.
    _, val_rows, _ = group_split(groups, 0.1, 0.15, seed=0)
    assert abs(len(val_rows) - 0.1 * len(groups)) <= sizes.max()


def test_unit_groups_needs_a_group_split() -> None:
    raw = {
        "data": {"path": "t.csv", "split": {"method": "random", "unit": "groups"}},
        "tasks": [{"name": "y", "kind": "regression", "target": "y"}],
    }
    with pytest.raises(ConfigError, match=r"data\.split\.unit: 'groups' applies to split method"):
        config_from_dict(raw)


def test_split_record_round_trip_by_id_and_by_row() -> None:
    table = pd.DataFrame({"id": [10, 11, 12, 13, 14], "x": range(5)})
    splits = (np.array([0, 2, 4]), np.array([1]), np.array([3]))
    record = split_record(splits, table["id"])
    assert record.to_dict("list") == {
        "row": [0, 2, 4, 1, 3],
        "split": ["train", "train", "train", "val", "test"],
        "id": ["10", "12", "14", "11", "13"],
    }
    # By id: the rows are found even when the table comes back reordered and re-typed.
    shuffled = table.iloc[::-1].astype({"id": float}).reset_index(drop=True)
    assert select_split(shuffled, record, "train", "id", "t")["x"].tolist() == [0, 2, 4]
    # Repeated ids: positions only.
    by_row = split_record(splits, pd.Series([1, 1, 2, 3, 4]))
    assert "id" not in by_row.columns
    assert select_split(table, by_row, "test", "id", "t")["x"].tolist() == [3]
    with pytest.raises(DataError, match="names row 4 but the table has 3 rows"):
        select_split(table.head(3), by_row, "train", None, "t")
    with pytest.raises(DataError, match=r"1 of the 1 test rows of the run are not in the table"):
        select_split(table.drop(index=3), record, "test", "id", "t")


@pytest.fixture(scope="module")
def patient_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("layouts")
    frame = patients(600)
    frame.to_csv(root / "patients.csv", index=False)
    raw = {
        "seed": 0,
        "baselines": False,
        "data": {
            "path": "patients.csv",
            "group": "patient_id",
            "id": "encounter_id",
            "na_values": ["?"],
            "ignore": ["gender"],
            "split": {"method": "group", "val": 0.15, "test": 0.2},
        },
        "tasks": [
            {"name": "readmitted", "kind": "binary", "target": "readmitted", "positive": "<30"},
            {"name": "stay", "kind": "regression", "target": "time_in_hospital"},
        ],
        "model": {"encoder": {"name": "mlp", "widths": [16]}},
        "train": {"epochs": 3, "batch_size": 64, "progress": False},
    }
    (root / "patients.toml").write_text(toml_text(raw), encoding="utf-8")
    run = root / "run"
    result = run_cli("train", root / "patients.toml", "--out", run)
    assert result.code == 0, result.err
    return SimpleNamespace(root=root, run=run, frame=frame, raw=raw)


def test_run_records_its_split(patient_run: SimpleNamespace) -> None:
    record = read_splits(patient_run.run)
    frame = patient_run.frame
    assert list(record.columns) == ["row", "split", "id"]
    assert sorted(record["row"]) == list(range(len(frame)))
    assert (frame["encounter_id"].to_numpy()[record["row"]] == record["id"].to_numpy()).all()
    # Group split: no patient in two splits.
    patient = frame["patient_id"].to_numpy()[record["row"]]
    owners = pd.Series(record["split"].to_numpy()).groupby(patient).nunique()
    assert owners.max() == 1
    counts = record["split"].value_counts()
    assert counts["test"] > 0 and counts["val"] > 0
    assert not list(patient_run.run.glob(".splits.csv*"))  # nothing half-written left


def test_evaluate_split_test_reproduces_the_runs_test_metrics(patient_run: SimpleNamespace) -> None:
    results = json.loads((patient_run.run / "results.json").read_text(encoding="utf-8"))
    assert results["split"] == "test"
    res = run_cli("evaluate", patient_run.run, "--split", "test", "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out) == results["multi_task"]
    # The same rows from the table given again, and the validation rows.
    res = run_cli(
        "evaluate", patient_run.run, patient_run.root / "patients.csv", "--split", "test", "--json"
    )
    assert json.loads(res.out) == results["multi_task"]
    val = run_cli("evaluate", patient_run.run, "--split", "val", "--json")
    assert val.code == 0 and json.loads(val.out) != results["multi_task"]


def test_evaluate_without_table_or_split_is_a_one_line_error(
    patient_run: SimpleNamespace, tmp_path: Path
) -> None:
    res = run_cli("evaluate", patient_run.run)
    assert res.code == 2 and "--split test" in res.err and len(res.err.strip().splitlines()) == 1
    res = run_cli("evaluate", patient_run.run / "model", "--split", "test")
    assert res.code == 2 and "is not a run directory" in res.err
    res = run_cli("evaluate", patient_run.run, "--split", "holdout")
    assert res.code == 2 and "expected one of train, val, test" in res.err


def test_evaluate_split_of_a_run_on_a_data_frame(tmp_path: Path) -> None:
    frame = patients(300, seed=1)
    result = polytask.fit(
        frame,
        [Task("stay", "regression", target="time_in_hospital")],
        data_options={"ignore": ["readmitted", "gender", "encounter_id", "patient_id"]},
        train={"epochs": 2, "progress": False},
        out=tmp_path / "run",
        quiet=True,
    )
    with pytest.raises(PolytaskError, match="trained on a data frame; give its table"):
        evaluate_split(tmp_path / "run", "test")
    frame.to_csv(tmp_path / "same.csv", index=False)
    metrics = evaluate_split(tmp_path / "run", "test", table=tmp_path / "same.csv")
    assert metrics == result.metrics


# -- .xlsx tables ---------------------------------------------------------------------------
def test_xlsx_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("openpyxl")
    frame = pd.DataFrame(
        {"id": ["a", "b", "c"], "x": [1.5, np.nan, 3.0], "n": [1, 2, 3], "y": ["yes", "?", "no"]}
    )
    path = tmp_path / "t.xlsx"
    frame.to_excel(path, index=False)
    back = read_table(path, na_values=["?"])
    expected = frame.assign(y=["yes", np.nan, "no"])
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    assert back["n"].tolist() == [1, 2, 3]


def test_xlsx_trains_and_without_openpyxl_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openpyxl")
    frame = patients(200, seed=2)
    frame.to_excel(tmp_path / "patients.xlsx", index=False)
    result = polytask.fit(
        tmp_path / "patients.xlsx",
        [Task("stay", "regression", target="time_in_hospital")],
        data_options={"ignore": ["readmitted", "gender", "encounter_id", "patient_id"]},
        train={"epochs": 1, "progress": False},
        quiet=True,
    )
    assert np.isfinite(result.metrics["stay"]["mae"])
    real = tables.importlib.util.find_spec
    monkeypatch.setattr(
        tables.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "openpyxl" else real(name, *a),
    )
    with pytest.raises(DataError, match=r"needs openpyxl.*pip install 'polytask\[excel\]'"):
        read_table(tmp_path / "patients.xlsx")
    (tmp_path / "bad.xlsx").write_bytes(b"not a zip")
    monkeypatch.undo()
    with pytest.raises(DataError, match=r"bad\.xlsx'"):
        read_table(tmp_path / "bad.xlsx")


# -- molecules from the user's own table ----------------------------------------------------
_FRAGMENTS = ("C", "C", "C(C)", "C(O)", "O", "C(=O)", "CC", "c1ccccc1")


def molecules(n: int, seed: int = 0) -> pd.DataFrame:
    """Random small valid SMILES and a label: does the molecule hold a nitrogen."""
    rng = np.random.default_rng(seed)
    smiles, labels = [], []
    for _ in range(n):
        parts = list(rng.choice(_FRAGMENTS, rng.integers(2, 7)))
        has_n = bool(rng.random() < 0.5)
        if has_n:
            parts.insert(int(rng.integers(0, len(parts) + 1)), "N")
        smiles.append("C" + "".join(parts))
        labels.append(int(has_n))
    return pd.DataFrame({"smiles": smiles, "amine": labels})


def test_smiles_fingerprints_equal_the_tox21_loaders() -> None:
    pytest.importorskip("rdkit")
    from polytask.data.datasets import molecules as mol
    from polytask.data.inputs.base import build_input

    table = molecules(40)
    processor = build_input("smiles", {"column": "smiles", "bits": 512, "descriptors": True})
    processor.fit(table, "t", None)
    numeric = processor.transform(table, "t")["numeric"].numpy()
    reference = mol.featurise(table["smiles"].tolist(), n_bits=512)
    bits = reference[mol.fingerprint_columns(512)].to_numpy(dtype=np.float32)
    assert numeric.shape == (40, 512 + len(mol.DESCRIPTORS))
    assert np.array_equal(numeric[:, :512], bits)
    descriptors = reference[list(mol.DESCRIPTORS)].to_numpy()
    mean, std = descriptors.mean(axis=0), descriptors.std(axis=0)
    std[std == 0] = 1.0
    assert np.allclose(numeric[:, 512:], (descriptors - mean) / std, atol=1e-5)


def test_smiles_unparsable_row_is_named_or_marked_missing() -> None:
    pytest.importorskip("rdkit")
    from polytask.data.inputs.base import build_input

    table = pd.DataFrame({"smiles": ["CCO", "C1CC", "CCN", None]}, index=[10, 11, 12, 13])
    strict = build_input("smiles", {"bits": 64})
    with pytest.raises(DataError, match=r"column 'smiles', row 11 holds 'C1CC'.*2 of 4 rows"):
        strict.fit(table, "data file 'm.csv'", None)
    lenient = build_input("smiles", {"bits": 64, "invalid": "missing"})
    lenient.fit(table, "t", None)
    numeric = lenient.transform(table, "t")["numeric"]
    assert numeric.shape == (4, 65)
    assert numeric[:, -1].tolist() == [0, 1, 0, 1]
    assert float(numeric[1, :64].abs().sum()) == 0.0 and float(numeric[0, :64].sum()) > 0


def test_smiles_features_are_cached_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("rdkit")
    from polytask.data.inputs import smiles as smiles_input
    from polytask.data.inputs.base import build_input, input_from_dict

    calls: list[int] = []
    real = smiles_input.featurise_smiles

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(smiles_input, "featurise_smiles", counting)
    table = molecules(30)
    params = {"bits": 128, "descriptors": True, "cache_dir": str(tmp_path / "cache")}
    first = build_input("smiles", params)
    first.fit(table, "t", None)
    before = first.transform(table, "t")["numeric"]
    assert len(calls) == 1 and len(list((tmp_path / "cache").glob("smiles-*-r2-b128-d.npz"))) == 1
    second = build_input("smiles", params)
    second.fit(table, "t", None)
    assert torch.equal(second.transform(table, "t")["numeric"], before) and len(calls) == 1
    # Other settings, other file; the cache folder is not saved with a model.
    other = build_input("smiles", {**params, "radius": 1})
    other.fit(table, "t", None)
    other.transform(table, "t")
    assert len(calls) == 2 and len(list((tmp_path / "cache").glob("*.npz"))) == 2
    stored = first.to_dict()
    assert "cache_dir" not in stored["params"]
    loaded = input_from_dict(json.loads(json.dumps(stored)))
    assert torch.equal(loaded.transform(table, "t")["numeric"], before)


def test_a_smiles_task_trains() -> None:
    pytest.importorskip("rdkit")
    table = molecules(400, seed=1)
    result = polytask.fit(
        table,
        [Task("amine", "binary", target="amine")],
        data_options={"input": {"name": "smiles", "column": "smiles", "bits": 256}},
        model={"encoder": {"name": "mlp", "widths": [32]}},
        train={"epochs": 15, "batch_size": 32, "lr": 0.01, "progress": False},
        quiet=True,
    )
    assert result.metrics["amine"]["auroc"] > 0.95
    new = pd.DataFrame({"smiles": ["CCCN", "CCCO"]})
    assert result.predictor.predict(new)["amine"].tolist() == ["1", "0"]
