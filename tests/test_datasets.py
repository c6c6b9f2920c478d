"""Tests of the dataset registry, data-root resolution, offline loading and verified fetching.

The real-data tests read the shared copies described in ``../shared/data/README.md`` and skip
when they are absent (fail under ``CI=true``); nothing here touches the network: fetching is
exercised with ``file://`` URLs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from polytask.data.datasets import (
    DATASETS,
    DatasetInfo,
    RemoteFile,
    data_available,
    fetch_dataset,
    load_dataset,
    resolve_data_root,
)
from polytask.data.datasets import root as root_module
from polytask.errors import DataError

RequireData = Callable[[str], Path]

# ---------------------------------------------------------------------------------------------
# Data root resolution


def test_explicit_root_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("POLYTASK_DATA", str(other))
    assert resolve_data_root(tmp_path) == tmp_path.resolve()


def test_env_var_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYTASK_DATA", str(tmp_path))
    assert resolve_data_root() == tmp_path.resolve()


def test_env_var_naming_missing_folder_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("POLYTASK_DATA", str(missing))
    with pytest.raises(DataError, match="POLYTASK_DATA") as info:
        resolve_data_root()
    assert str(missing) in str(info.value)


def test_explicit_missing_root_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        resolve_data_root(missing)
    assert str(missing) in str(info.value)


def test_cwd_relative_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "project").mkdir()
    monkeypatch.delenv("POLYTASK_DATA", raising=False)
    monkeypatch.chdir(tmp_path / "project")
    assert resolve_data_root() == (tmp_path / "shared" / "data").resolve()


def test_repo_relative_default_or_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # From a working directory with no ../shared/data, only the repository fallback is left.
    workdir = tmp_path / "a" / "b"
    workdir.mkdir(parents=True)
    monkeypatch.delenv("POLYTASK_DATA", raising=False)
    monkeypatch.chdir(workdir)
    repo_default = Path(root_module.__file__).resolve().parents[4].parent / "shared" / "data"
    if repo_default.is_dir():
        assert resolve_data_root() == repo_default.resolve()
    else:
        with pytest.raises(DataError, match="POLYTASK_DATA"):
            resolve_data_root()


def test_nothing_found_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POLYTASK_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(root_module, "_REPO_ROOT", tmp_path / "repo")
    with pytest.raises(DataError) as info:
        resolve_data_root()
    message = str(info.value)
    assert "\n" not in message
    assert "POLYTASK_DATA" in message
    assert str((tmp_path / ".." / "shared" / "data").resolve()) in message


def test_data_available(tmp_path: Path) -> None:
    assert not data_available("census", tmp_path)
    assert not data_available("census", tmp_path / "nowhere")
    relpath = DATASETS["census"].files[0].relpath
    (tmp_path / relpath).parent.mkdir(parents=True)
    (tmp_path / relpath).write_bytes(b"")
    assert data_available("census", tmp_path)
    # Unregistered names are paths relative to the root.
    assert data_available("census-income", tmp_path)
    assert not data_available("molecules/tox21.csv", tmp_path)


# ---------------------------------------------------------------------------------------------
# Registry and load errors


def test_registry_entries_are_consistent() -> None:
    assert set(DATASETS) == {
        "census",
        "diabetes",
        "tox21",
        "qm8",
        "multimnist",
        "mnist_detection",
        "fsdd",
        "fdu_mtl",
        "synthetic_school",
    }
    for name, info in DATASETS.items():
        assert info.name == name
        generated = name.startswith("synthetic_")  # made by polytask.data.synthetic
        assert (info.files or generated) and all(len(f.sha256) == 64 for f in info.files)
        assert all(f.url.startswith("https://") for f in info.files)
        assert set(info.targets.values()) <= {
            "binary",
            "regression",
            "multiclass",
            "segmentation",
            "detection",
        }
        assert not set(info.targets) & set(info.ignore)
        assert info.citation


def test_unknown_task_kind_rejected() -> None:
    with pytest.raises(ValueError, match="ordinal"):
        dataclasses.replace(DATASETS["census"], targets={"income_50k": "ordinal"})


def test_load_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'no-such-data'") as info:
        load_dataset("no-such-data", tmp_path)
    assert "census" in str(info.value) and "diabetes" in str(info.value)


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="fetch_dataset") as info:
        load_dataset("census", tmp_path)
    assert str(tmp_path.resolve() / DATASETS["census"].files[0].relpath) in str(info.value)


# ---------------------------------------------------------------------------------------------
# Fetching (file:// URLs only)


def _toy_dataset(source: Path, sha256: str) -> DatasetInfo:
    def loader(root: Path) -> pd.DataFrame:
        return pd.read_csv(root / "toy" / "toy.csv")

    return DatasetInfo(
        name="toy",
        summary="toy",
        files=(RemoteFile("toy/toy.csv", source.as_uri(), sha256),),
        loader=loader,
        targets={"y": "binary"},
        group=None,
        ignore=(),
        citation="none",
    )


@pytest.fixture
def toy_source(tmp_path: Path) -> tuple[Path, str]:
    source = tmp_path / "server" / "toy.csv"
    source.parent.mkdir()
    source.write_text("x,y\n1.5,0\n2.5,1\n")
    return source, hashlib.sha256(source.read_bytes()).hexdigest()


def test_fetch_then_load(
    tmp_path: Path, toy_source: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, sha = toy_source
    monkeypatch.setitem(DATASETS, "toy", _toy_dataset(source, sha))
    dest_root = tmp_path / "data"
    returned = fetch_dataset("toy", dest_root)
    assert returned == dest_root.resolve()
    assert (dest_root / "toy" / "toy.csv").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in (dest_root / "toy").iterdir()) == ["toy.csv"]
    frame = load_dataset("toy", returned)
    assert frame["y"].tolist() == [0, 1]
    # A second fetch keeps the verified file.
    assert fetch_dataset("toy", dest_root) == returned


def test_fetch_replaces_registered_census_files(
    tmp_path: Path, toy_source: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, sha = toy_source
    relpath = DATASETS["census"].files[0].relpath
    patched = dataclasses.replace(
        DATASETS["census"], files=(RemoteFile(relpath, source.as_uri(), sha),)
    )
    monkeypatch.setitem(DATASETS, "census", patched)
    fetch_dataset("census", tmp_path / "data")
    assert (tmp_path / "data" / relpath).read_bytes() == source.read_bytes()


def test_fetch_checksum_mismatch_leaves_nothing(
    tmp_path: Path, toy_source: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, _ = toy_source
    monkeypatch.setitem(DATASETS, "toy", _toy_dataset(source, "0" * 64))
    dest_root = tmp_path / "data"
    with pytest.raises(DataError, match="checksum mismatch") as info:
        fetch_dataset("toy", dest_root)
    assert "0" * 64 in str(info.value)
    assert not (dest_root / "toy" / "toy.csv").exists()
    assert list((dest_root / "toy").iterdir()) == []


def test_fetch_unreachable_url_leaves_nothing(
    tmp_path: Path, toy_source: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, sha = toy_source
    monkeypatch.setitem(DATASETS, "toy", _toy_dataset(source.with_name("gone.csv"), sha))
    dest_root = tmp_path / "data"
    with pytest.raises(DataError, match="could not download"):
        fetch_dataset("toy", dest_root)
    assert list((dest_root / "toy").iterdir()) == []


def test_fetch_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset"):
        fetch_dataset("no-such-data", tmp_path)


# ---------------------------------------------------------------------------------------------
# Census-Income (KDD), real data


@pytest.fixture(scope="module")
def census(require_data: RequireData) -> pd.DataFrame:
    return load_dataset("census", require_data("census"))


def test_census_shape_and_columns(census: pd.DataFrame) -> None:
    assert census.shape == (99762, 44)
    assert census.columns[7] == "marital_stat"
    assert census.columns[24] == "instance_weight"
    assert census.columns[41] == "income"
    assert list(census.columns[42:]) == ["income_50k", "never_married"]
    for column in DATASETS["census"].ignore:
        assert column in census.columns


def test_census_targets(census: pd.DataFrame) -> None:
    for target in DATASETS["census"].targets:
        assert census[target].dtype == "int64"
        assert not census[target].isna().any()
        assert set(census[target].unique()) <= {0, 1}
    assert 0.05 < census["income_50k"].mean() < 0.075
    assert 0.35 < census["never_married"].mean() < 0.5
    assert (census["income_50k"] == (census["income"] == "50000+.")).all()
    assert census["marital_stat"].nunique() == 7


def test_census_dtypes(census: pd.DataFrame) -> None:
    for column in (
        "detailed_industry_recode",
        "detailed_occupation_recode",
        "own_business_or_self_employed",
        "veterans_benefits",
        "year",
        "education",
    ):
        assert pd.api.types.is_string_dtype(census[column]), column
    assert set(census["year"].unique()) == {"94", "95"}
    for column in ("age", "wage_per_hour", "capital_gains", "weeks_worked_in_year"):
        assert pd.api.types.is_integer_dtype(census[column]), column
    assert census["instance_weight"].dtype == "float64"
    # Strings are stripped on both sides and "?" is missing, not a category.
    citizenship = census["citizenship"].dropna()
    assert (citizenship == citizenship.str.strip()).all()
    assert "Foreign born- Not a citizen of U S" in set(citizenship)
    assert census["migration_code_change_in_msa"].isna().any()
    strings = [c for c in census.columns if pd.api.types.is_string_dtype(census[c])]
    assert len(strings) == 34
    assert not census[strings].eq("?").any().any()


def test_census_features(census: pd.DataFrame) -> None:
    features = DATASETS["census"].feature_columns(census)
    assert len(features) == 39
    assert "income" not in features and "instance_weight" not in features


# ---------------------------------------------------------------------------------------------
# Diabetes 130-US hospitals, real data


@pytest.fixture(scope="module")
def diabetes(require_data: RequireData) -> pd.DataFrame:
    return load_dataset("diabetes", require_data("diabetes"))


def test_diabetes_shape_and_group(diabetes: pd.DataFrame) -> None:
    assert len(diabetes) == 101766
    assert DATASETS["diabetes"].group == "patient_nbr"
    assert diabetes["patient_nbr"].nunique() == 71518
    for column in DATASETS["diabetes"].ignore:
        assert column in diabetes.columns


def test_diabetes_targets(diabetes: pd.DataFrame) -> None:
    assert diabetes["readmitted_30"].dtype == "int64"
    assert not diabetes["readmitted_30"].isna().any()
    assert 0.10 < diabetes["readmitted_30"].mean() < 0.125
    stay = diabetes["time_in_hospital"]
    assert stay.dtype == "float64"
    assert not stay.isna().any()
    assert stay.min() == 1 and stay.max() == 14


def test_diabetes_dtypes_and_missing(diabetes: pd.DataFrame) -> None:
    for column in (
        "admission_type_id",
        "discharge_disposition_id",
        "admission_source_id",
        "diag_1",
        "diag_2",
        "diag_3",
    ):
        assert pd.api.types.is_string_dtype(diabetes[column]), column
    assert "V57" in set(diabetes["diag_1"].dropna())
    # "?" is missing; "None" (test not taken) stays a category.
    assert diabetes["weight"].isna().mean() > 0.95
    assert not diabetes["race"].eq("?").any()
    assert "None" in set(diabetes["A1Cresult"])
    features = DATASETS["diabetes"].feature_columns(diabetes)
    assert "payer_code" in features
    assert "patient_nbr" not in features and "readmitted" not in features


def test_one_task_of_a_dataset_never_reads_the_others_labels(require_data: RequireData) -> None:
    # Training one of a dataset's tasks must not turn the other tasks' labels into features
    # (here never_married, which would leak a label into the income model).
    from polytask.config import config_from_dict
    from polytask.data.prepare import prepare_data

    cfg = config_from_dict(
        {
            "data": {"dataset": "census", "root": str(require_data("census"))},
            "tasks": [{"name": "income", "kind": "binary", "target": "income_50k"}],
        }
    )
    data = prepare_data(cfg)
    columns = set(data.preprocessor.columns)
    assert "age" in columns
    assert not columns & set(DATASETS["census"].targets)
