"""Target fitting and encoding (binary positive label, classes) and train/val/test splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from polytask.data.split import group_split, random_split
from polytask.data.targets import encode_targets, fit_task
from polytask.errors import ConfigError, DataError
from polytask.tasks import Task


def _fit(
    task: Task, values: list, train_rows: np.ndarray | None = None
) -> tuple[Task, pd.DataFrame]:
    df = pd.DataFrame({"y": values})
    rows = np.arange(len(df)) if train_rows is None else train_rows
    return fit_task(task, df, rows, "data.csv"), df


@pytest.mark.parametrize(
    ("values", "classes", "encoded"),
    [
        ([0, 1, 1, 0, 1], ["0", "1"], [0, 1, 1, 0, 1]),
        ([1.0, 0.0, 1.0, 1.0, 0.0], ["0", "1"], [1, 0, 1, 1, 0]),
        (["yes", "no", "no", "yes", "yes"], ["no", "yes"], [1, 0, 0, 1, 1]),
        (["TRUE", "FALSE", "TRUE", "TRUE", "FALSE"], ["FALSE", "TRUE"], [1, 0, 1, 1, 0]),
        ([True, False, False, True, False], ["false", "true"], [1, 0, 0, 1, 0]),
        (["Y", "N", "Y", "N", "N"], ["N", "Y"], [1, 0, 1, 0, 0]),
    ],
)
def test_binary_positive_inferred(values: list, classes: list[str], encoded: list[int]) -> None:
    task, df = _fit(Task("risk", "binary", "y"), values)
    assert task.classes == classes  # [negative, positive]
    y, mask = encode_targets(task, df, "data.csv")
    assert y.dtype == torch.float32
    assert y.tolist() == encoded
    assert bool(mask.all())


def test_binary_other_labels_ask_for_positive() -> None:
    values = ["alive", "dead", "dead", "alive"]
    with pytest.raises(DataError) as info:
        _fit(Task("risk", "binary", "y"), values)
    msg = str(info.value)
    assert "data.csv: task 'risk'" in msg
    assert "['alive', 'dead']" in msg
    assert "set positive = '...'" in msg
    task, df = _fit(Task("risk", "binary", "y", positive="alive"), values)
    assert task.classes == ["dead", "alive"]
    assert encode_targets(task, df, "x")[0].tolist() == [1, 0, 0, 1]
    with pytest.raises(DataError, match=r"positive label 'maybe' not among \['alive', 'dead'\]"):
        _fit(Task("risk", "binary", "y", positive="maybe"), values)


def test_declared_binary_classes_are_negative_then_positive() -> None:
    task, df = _fit(Task("risk", "binary", "y", classes=["yes", "no"]), ["yes", "no", "no"])
    assert task.classes == ["yes", "no"]
    assert encode_targets(task, df, "x")[0].tolist() == [0, 1, 1]


def test_binary_with_three_labels_points_to_multiclass() -> None:
    with pytest.raises(DataError, match=r"3 distinct labels .*use kind = 'multiclass'"):
        _fit(Task("risk", "binary", "y"), ["a", "b", "c", "a"])


def test_one_class_in_training_rows_is_an_error() -> None:
    values = ["no", "no", "no", "yes", "yes"]
    with pytest.raises(DataError) as info:
        _fit(Task("risk", "binary", "y"), values, train_rows=np.array([0, 1, 2]))
    assert str(info.value) == (
        "data.csv: task 'risk': column 'y' has 1 class(es) ['no'] in the training rows; "
        "a binary task needs at least 2"
    )
    with pytest.raises(DataError, match="needs at least 2"):
        _fit(Task("kind", "multiclass", "y"), ["a", "a", None, "a"])


def test_labels_outside_declared_classes() -> None:
    task = Task("kind", "multiclass", "y", classes=["a", "b", "c"])
    with pytest.raises(DataError, match=r"labels outside the declared classes .*\['d', 'e'\]"):
        _fit(task, ["a", "b", "d", "e", "c"])
    fitted, df = _fit(task, ["c", "a", None, "a"])  # a declared class may be absent from data
    assert fitted.classes == ["a", "b", "c"]
    y, mask = encode_targets(fitted, df, "x")
    assert y.dtype == torch.int64
    assert y.tolist() == [2, 0, 0, 0] and mask.tolist() == [True, True, False, True]
    # Encoding a new table with a label the fitted task does not know is an error too.
    with pytest.raises(DataError, match=r"new\.csv: task 'kind': column 'y' .*\['z'\]"):
        encode_targets(fitted, pd.DataFrame({"y": ["a", "z"]}), "new.csv")


def test_missing_labels_are_masked() -> None:
    task, df = _fit(Task("risk", "binary", "y"), [1, None, 0, "", " ", 1])
    y, mask = encode_targets(task, df, "x")
    assert mask.tolist() == [True, False, True, False, False, True]
    reg, rdf = _fit(Task("days", "regression", "y"), [2.0, np.nan, 4.0, None, 9.0])
    assert reg.target_mean == pytest.approx(5.0)
    assert reg.target_std == pytest.approx(np.std([2.0, 4.0, 9.0]))
    y, mask = encode_targets(reg, rdf, "x")
    assert mask.tolist() == [True, False, True, False, True]
    np.testing.assert_allclose(y[mask].numpy(), (np.array([2.0, 4.0, 9.0]) - 5.0) / reg.target_std)


def test_regression_text_value_names_column_and_row() -> None:
    with pytest.raises(DataError, match=r"column 'y' should hold numbers but row 2 has 'ten'"):
        _fit(Task("days", "regression", "y"), [1.0, 2.0, "ten"])


def test_multilabel_columns_must_be_binary() -> None:
    df = pd.DataFrame({"a": [1, 0, None], "b": ["yes", "no", "maybe"]})
    task = Task("tags", "multilabel", ["a", "b"])
    with pytest.raises(DataError, match=r"label column 'b' should hold 0/1 but row 2 has 'maybe'"):
        fit_task(task, df, np.arange(3), "data.csv")
    ok = pd.DataFrame({"a": [1, 0, None], "b": ["yes", None, "no"]})
    y, mask = encode_targets(fit_task(task, ok, np.arange(3), "d"), ok, "d")
    assert y.tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    assert mask.tolist() == [[True, True], [True, False], [False, True]]


def test_random_split_reproducible_and_disjoint() -> None:
    a = random_split(1000, 0.2, 0.1, seed=5)
    b = random_split(1000, 0.2, 0.1, seed=5)
    c = random_split(1000, 0.2, 0.1, seed=6)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert [len(x) for x in a] == [700, 200, 100]
    assert np.array_equal(np.sort(np.concatenate(a)), np.arange(1000))
    with pytest.raises(ConfigError, match=r"val \(0\.6\) and test \(0\.4\)"):
        random_split(10, 0.6, 0.4, seed=0)


def test_group_split_keeps_groups_together() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 12, 400)
    groups = pd.Series(np.repeat([f"p{i}" for i in range(400)], sizes), name="patient")
    n = len(groups)
    train, val, test = group_split(groups, 0.2, 0.15, seed=3)
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(n))
    members = [set(groups.iloc[idx]) for idx in (train, val, test)]
    assert not (members[0] & members[1]) and not (members[0] & members[2])
    assert not (members[1] & members[2])
    # Fractions are of rows, within about two groups of the target.
    assert len(val) / n == pytest.approx(0.2, abs=0.01)
    assert len(test) / n == pytest.approx(0.15, abs=0.01)
    again = group_split(groups, 0.2, 0.15, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip((train, val, test), again, strict=True))
    other = group_split(groups, 0.2, 0.15, seed=4)
    assert not np.array_equal(train, other[0])


def test_group_split_rejects_missing_groups() -> None:
    with pytest.raises(DataError, match="group column 'site' has missing values"):
        group_split(pd.Series(["a", None, "b"], name="site"), 0.2, 0.2, seed=0)
