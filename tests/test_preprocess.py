"""Feature preprocessing: standardisation, missing values, categorical encodings, JSON."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from polytask.data.preprocess import (
    MISSING_TOKEN,
    PreprocessOptions,
    TablePreprocessor,
    infer_types,
)
from polytask.errors import DataError


def _fit(df: pd.DataFrame, numeric=(), categorical=(), **options) -> TablePreprocessor:
    return TablePreprocessor.fit(df, numeric, categorical, PreprocessOptions(**options), "train")


def test_numeric_standardised_with_train_statistics() -> None:
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"a": rng.normal(5, 3, 200), "b": rng.integers(0, 100, 200)})
    pre = _fit(train, ["a", "b"])
    out = pre.transform(train, "train")["numeric"].double().numpy()
    assert out.shape == (200, 2)  # no missing values: no indicator columns
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=1e-6)
    # New rows use the training statistics, not their own.
    new = pd.DataFrame({"a": [5.0, 100.0], "b": [0, 50]})
    got = pre.transform(new, "new")["numeric"].double().numpy()
    a, b = train["a"].to_numpy(), train["b"].to_numpy().astype(float)
    expected = np.array(
        [
            [(5.0 - a.mean()) / a.std(), (0 - b.mean()) / b.std()],
            [(100.0 - a.mean()) / a.std(), (50 - b.mean()) / b.std()],
        ]
    )
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("scale_binary", [True, False])
def test_binary_columns_kept_as_bits_only_when_asked(scale_binary: bool) -> None:
    bits = np.array([0, 0, 0, 1, 0, 0, 0, 0, 1, 0], dtype=float)  # a rare bit
    train = pd.DataFrame({"bit": bits, "x": np.arange(10.0)})
    pre = _fit(train, ["bit", "x"], scale_binary=scale_binary)
    out = pre.transform(train, "train")["numeric"].double().numpy()
    expected_bit = bits if not scale_binary else (bits - bits.mean()) / bits.std()
    np.testing.assert_allclose(out[:, 0], expected_bit, rtol=1e-6)
    # Non-binary columns are standardised either way.
    np.testing.assert_allclose(out[:, 1], (np.arange(10.0) - 4.5) / np.arange(10.0).std(), 1e-6)


def test_constant_column_does_not_divide_by_zero() -> None:
    pre = _fit(pd.DataFrame({"a": [2.0, 2.0, 2.0]}), ["a"])
    out = pre.transform(pd.DataFrame({"a": [2.0, 5.0]}), "new")["numeric"]
    assert torch.equal(out, torch.tensor([[0.0], [3.0]]))


def test_median_fill_and_missing_indicator() -> None:
    train = pd.DataFrame({"a": [1.0, 2.0, np.nan, 4.0, 10.0], "full": [1.0, 2.0, 3.0, 4.0, 5.0]})
    pre = _fit(train, ["a", "full"])
    col = pre.numeric[0]
    assert col.fill == 3.0  # median of the observed 1, 2, 4, 10
    assert col.indicator and not pre.numeric[1].indicator
    filled = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    assert col.mean == pytest.approx(filled.mean())
    assert col.std == pytest.approx(filled.std())
    assert pre.numeric_width == 3  # a, a's indicator, full
    out = pre.transform(pd.DataFrame({"a": [np.nan, 7.0], "full": [np.nan, 1.0]}), "new")
    x = out["numeric"].double().numpy()
    np.testing.assert_allclose(x[:, 0], (np.array([3.0, 7.0]) - filled.mean()) / filled.std(), 1e-6)
    np.testing.assert_array_equal(x[:, 1], [1.0, 0.0])  # indicator: row 0 was missing
    # A column complete in train has no indicator: its missing value is just filled (median 3).
    np.testing.assert_allclose(x[:, 2], (np.array([3.0, 1.0]) - 3.0) / np.std([1, 2, 3, 4, 5]))
    no_ind = _fit(train, ["a"], missing_indicator=False, missing_numeric="mean")
    assert no_ind.numeric[0].fill == pytest.approx(17 / 4) and not no_ind.numeric[0].indicator
    assert no_ind.numeric_width == 1


def test_auto_encoding_rule_onehot_vs_embedding() -> None:
    train = pd.DataFrame(
        {
            "small": ["a", "b", "c", "a"] * 5,
            "big": [f"v{i}" for i in range(20)],
            "edge": ["p", "q", "r", None] * 5,  # 3 values + missing = 4 categories
        }
    )
    pre = _fit(train, (), ["small", "big", "edge"], onehot_max_categories=4)
    enc = {c.name: (c.encoding, len(c.categories)) for c in pre.categorical}
    assert enc == {"small": ("onehot", 3), "big": ("embedding", 20), "edge": ("onehot", 4)}
    assert MISSING_TOKEN in pre.categorical[2].categories
    assert pre.numeric_width == 3 + 4
    assert pre.cardinalities == [21]  # 20 categories + the unknown slot
    out = pre.transform(train, "train")
    assert out["numeric"].shape == (20, 7)
    assert out["categorical"].shape == (20, 1)
    assert torch.equal(out["numeric"][:, :3].sum(dim=1), torch.ones(20))
    # Embedding indices are 1-based; 0 is the unknown slot.
    assert int(out["categorical"].min()) == 1 and int(out["categorical"].max()) == 20
    forced = _fit(train, (), ["small"], categorical_encoding="embedding")
    assert forced.categorical[0].encoding == "embedding" and forced.numeric_width == 0


def test_unseen_category_goes_to_unknown_slot() -> None:
    train = pd.DataFrame({"small": ["a", "b", "a"], "big": ["x", "y", "z"]})
    pre = _fit(train, (), ["small", "big"], onehot_max_categories=2)
    assert [c.encoding for c in pre.categorical] == ["onehot", "embedding"]
    out = pre.transform(pd.DataFrame({"small": ["nope", "b"], "big": ["nope", "y"]}), "new")
    assert torch.equal(out["numeric"], torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    assert torch.equal(out["categorical"], torch.tensor([[0], [2]]))


def test_unseen_category_error_names_column_and_value() -> None:
    train = pd.DataFrame({"colour": ["red", "blue", "red", "green"]})
    pre = _fit(train, (), ["colour"], unseen="error", min_frequency=2)
    assert pre.categorical[0].categories == ["red"]
    # Values seen in training but too rare are not "unseen": they map to the unknown slot.
    out = pre.transform(pd.DataFrame({"colour": ["blue", "red"]}), "new")
    assert torch.equal(out["numeric"], torch.tensor([[0.0], [1.0]]))
    with pytest.raises(DataError, match=r"new\.csv: column 'colour' has category 'purple'"):
        pre.transform(pd.DataFrame({"colour": ["red", "purple"]}), "new.csv")


def test_integral_floats_and_strings_are_one_category() -> None:
    pre = _fit(pd.DataFrame({"code": [1.0, 2.0, 2.0, np.nan]}), (), ["code"])
    assert pre.categorical[0].categories == sorted(["1", "2", MISSING_TOKEN])
    a = pre.transform(pd.DataFrame({"code": ["2", " 1 ", ""]}), "new")
    b = pre.transform(pd.DataFrame({"code": [2.0, 1.0, np.nan]}), "new")
    assert torch.equal(a["numeric"], b["numeric"])
    assert float(a["numeric"].sum()) == 3.0


def test_json_round_trip_is_bit_identical() -> None:
    rng = np.random.default_rng(3)
    n = 300
    df = pd.DataFrame(
        {
            "x": rng.normal(0, 1, n) * 1e3 + 0.1,
            "y": np.where(rng.random(n) < 0.2, np.nan, rng.exponential(3.3, n)),
            "flag": rng.random(n) < 0.5,
            "cat": rng.choice(["a", "b", "c", None], n),
            "big": rng.choice([f"k{i}" for i in range(40)], n),
        }
    )
    numeric, categorical = infer_types(df, list(df.columns))
    assert numeric == ["x", "y", "flag"] and categorical == ["cat", "big"]
    pre = TablePreprocessor.fit(df.iloc[:200], numeric, categorical, PreprocessOptions(), "train")
    text = json.dumps(pre.to_dict())
    again = TablePreprocessor.from_dict(json.loads(text))
    assert again.to_dict() == pre.to_dict()
    a, b = pre.transform(df, "all"), again.transform(df, "all")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype
        assert torch.equal(a[key], b[key])
    with pytest.raises(DataError, match="unsupported format"):
        TablePreprocessor.from_dict({**pre.to_dict(), "format": "other/9"})


def test_text_in_numeric_column_names_column_and_row() -> None:
    pre = _fit(pd.DataFrame({"age": [30.0, 40.0, 50.0]}), ["age"])
    bad = pd.DataFrame({"age": ["31", "42", "forty"]})
    with pytest.raises(DataError, match=r"^scoring\.csv: column 'age' .*row 2 has 'forty'$"):
        pre.transform(bad, "scoring.csv")
    # Fitting rejects it just the same.
    with pytest.raises(DataError, match=r"column 'age' .*row 1 has 'n/a'"):
        _fit(pd.DataFrame({"age": ["1", "n/a", ""]}), ["age"])
    # Blank strings are missing values, not errors.
    out = pre.transform(pd.DataFrame({"age": ["", "40"]}), "x")["numeric"]
    assert out.shape == (2, 1) and float(out[1, 0]) == 0.0


def test_missing_feature_column_is_reported() -> None:
    pre = _fit(pd.DataFrame({"a": [1.0, 2.0], "b": ["u", "v"]}), ["a"], ["b"])
    with pytest.raises(DataError, match=r"feature column\(s\) \['b'\] not found"):
        pre.transform(pd.DataFrame({"a": [1.0]}), "new")
