"""Tests of the MMoE synthetic generator (Ma et al., KDD 2018, Section 3.2)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from polytask.data.synthetic import make_mmoe_synthetic


def test_columns_and_dtypes() -> None:
    frame = make_mmoe_synthetic(500, 0.5, n_features=8, seed=3)
    assert list(frame.columns) == [f"x{i}" for i in range(8)] + [
        "y_regression",
        "y_binary",
        "y2_raw",
    ]
    assert len(frame) == 500
    assert (frame.dtypes.iloc[:8] == np.float32).all()
    assert frame["y_regression"].dtype == np.float64
    assert frame["y2_raw"].dtype == np.float64
    assert frame["y_binary"].dtype == np.int64
    assert set(frame["y_binary"].unique()) == {0, 1}
    # Thresholded at the median: balanced.
    assert frame["y_binary"].sum() == 250
    assert not frame.isna().any().any()


def test_binary_is_y2_above_median() -> None:
    frame = make_mmoe_synthetic(1001, 0.3, seed=1)
    expected = (frame["y2_raw"] > frame["y2_raw"].median()).astype(np.int64)
    assert (frame["y_binary"] == expected).all()


def test_reproducible() -> None:
    a = make_mmoe_synthetic(300, 0.7, n_features=10, seed=11)
    b = make_mmoe_synthetic(300, 0.7, n_features=10, seed=11)
    pd.testing.assert_frame_equal(a, b)
    c = make_mmoe_synthetic(300, 0.7, n_features=10, seed=12)
    assert not np.allclose(a.to_numpy(), c.to_numpy())


def test_label_correlation_increases_with_task_correlation() -> None:
    # The paper's premise: the labels' Pearson correlation falls as the correlation score does.
    pearson = []
    for p in (0.0, 0.5, 0.9, 1.0):
        frame = make_mmoe_synthetic(20000, p, seed=0)
        pearson.append(frame["y_regression"].corr(frame["y2_raw"]))
    assert all(a < b for a, b in itertools.pairwise(pearson)), pearson
    assert abs(pearson[0]) < 0.05
    # With p = 1 both tasks share w, so they differ only by the independent noise.
    assert pearson[-1] > 0.95


def test_full_correlation_differs_only_by_noise() -> None:
    frame = make_mmoe_synthetic(2000, 1.0, noise=0.0, seed=5)
    np.testing.assert_allclose(frame["y_regression"], frame["y2_raw"])


def test_negative_correlation_is_allowed() -> None:
    frame = make_mmoe_synthetic(20000, -1.0, n_sines=0, seed=2)
    assert frame["y_regression"].corr(frame["y2_raw"]) < -0.95


def test_scale_multiplies_linear_part() -> None:
    frame = make_mmoe_synthetic(1000, 0.0, n_sines=0, noise=0.0, scale=3.0, seed=4)
    # Without sines or noise, y1 = c u1^T x with unit u1, so its standard deviation is about c.
    assert frame["y_regression"].std() == pytest.approx(3.0, rel=0.1)


@pytest.mark.parametrize("correlation", [-1.01, 1.5, float("nan")])
def test_invalid_correlation(correlation: float) -> None:
    with pytest.raises(ValueError, match="correlation must be between -1 and 1"):
        make_mmoe_synthetic(10, correlation)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="n_samples must be at least 1"):
        make_mmoe_synthetic(0, 0.5)
    with pytest.raises(ValueError, match="n_features must be at least 2"):
        make_mmoe_synthetic(10, 0.5, n_features=1)
    with pytest.raises(ValueError, match="n_sines"):
        make_mmoe_synthetic(10, 0.5, n_sines=-1)
    with pytest.raises(ValueError, match="noise"):
        make_mmoe_synthetic(10, 0.5, noise=-0.1)
