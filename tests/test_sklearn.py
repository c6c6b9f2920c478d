"""``polytask.sklearn.MultiTaskEstimator`` inside scikit-learn: clone, Pipeline, cross_validate,
GridSearchCV, and the estimator checks that apply to a multi-task estimator."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import estimator_checks

from polytask.errors import PolytaskError
from polytask.sklearn import MultiTaskEstimator

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TINY: dict[str, Any] = {
    "model": {"encoder": {"widths": [8]}, "head": {"widths": [4]}},
    "train": {"epochs": 2, "batch_size": 32},
}


def _data(n: int = 160) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(n, 3)) * [1, 10, 100], columns=["a", "b", "c"])
    y = pd.DataFrame(
        {
            "sign": np.where(x["a"] > 0, "up", "down"),
            "level": x["b"] / 10 + rng.normal(0, 0.1, n),
            "bucket": pd.cut(x["a"], [-np.inf, -0.5, 0.5, np.inf], labels=[0, 1, 2]).astype(int),
        }
    )
    return x, y


def test_tasks_inferred_and_outputs_in_y_units() -> None:
    x, y = _data()
    est = MultiTaskEstimator(**TINY).fit(x, y)
    assert [(t.name, t.kind) for t in est.tasks_] == [
        ("sign", "binary"),
        ("level", "regression"),
        ("bucket", "multiclass"),
    ]
    predicted = est.predict(x.head(5))
    assert predicted.shape == (5, 3)
    assert set(predicted[:, 0]) <= {"up", "down"} and set(predicted[:, 2]) <= {0, 1, 2}
    proba = est.predict_proba(x.head(5))
    assert [p.shape for p in proba] == [(5, 2), (5, 3)]
    np.testing.assert_allclose([p.sum(axis=1) for p in proba], 1.0, rtol=1e-6)
    assert list(est.classes_[0]) == ["down", "up"]  # the positive class second
    assert -1.0 <= est.score(x, y) <= 1.0


def test_clone_gives_an_unfitted_equal_estimator() -> None:
    est = MultiTaskEstimator(tasks=[{"name": "s", "kind": "binary", "target": "sign"}], **TINY)
    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin is not est
    x, y = _data()
    est.fit(x, y)
    with pytest.raises(NotFittedError):
        clone(est).predict(x)
    # The same seed on one thread trains the same network.
    np.testing.assert_array_equal(clone(est).fit(x, y).predict_proba(x), est.predict_proba(x))


def test_pipeline_and_cross_validate() -> None:
    x, y = _data()
    pipe = make_pipeline(StandardScaler(), MultiTaskEstimator(**TINY))
    result = cross_validate(pipe, x.to_numpy(), y, cv=KFold(2), error_score="raise")
    assert result["test_score"].shape == (2,)
    assert np.isfinite(result["test_score"]).all()


def test_grid_search_over_a_section() -> None:
    x, y = _data(120)
    grid = GridSearchCV(
        MultiTaskEstimator(tasks=[{"name": "s", "kind": "binary", "target": "sign"}], **TINY),
        {"train": [{"epochs": 1, "batch_size": 32}, {"epochs": 3, "batch_size": 32}]},
        cv=2,
        error_score="raise",
    )
    grid.fit(x, y)
    assert grid.best_params_["train"]["epochs"] in (1, 3)
    assert grid.predict(x.head(3)).shape == (3,)


def test_bad_inputs_are_one_line_errors() -> None:
    x, y = _data(40)
    with pytest.raises(PolytaskError, match=r"target column 'nope' is not in Y"):
        MultiTaskEstimator(tasks=[{"name": "t", "kind": "binary", "target": "nope"}]).fit(x, y)
    with pytest.raises(PolytaskError, match="X has 40 rows but Y has 39"):
        MultiTaskEstimator().fit(x, y.head(39))


@pytest.mark.parametrize(
    "check",
    [
        estimator_checks.check_no_attributes_set_in_init,
        estimator_checks.check_get_params_invariance,
        estimator_checks.check_set_params,
        estimator_checks.check_parameters_default_constructible,
        estimator_checks.check_estimators_unfitted,
        estimator_checks.check_estimator_repr,
        estimator_checks.check_estimator_cloneable,
    ],
    ids=lambda c: c.__name__,
)
def test_sklearn_checks_that_apply(check: Any) -> None:
    check("MultiTaskEstimator", MultiTaskEstimator(**TINY))


def _multilabel(n: int = 160) -> tuple[pd.DataFrame, pd.DataFrame]:
    x, y = _data(n)
    tags = pd.DataFrame(
        {
            "red": (x["a"] > 0).astype(np.int64),
            "round": (x["b"] > 0).astype(np.int64),
            "big": (x["c"] > 50).astype(np.int64),
        }
    )
    return x, pd.concat([y[["level"]], tags], axis=1)


ML_TASK = {"name": "tags", "kind": "multilabel", "target": ["red", "round", "big"]}


def test_multilabel_task_predicts_an_indicator_matrix() -> None:
    x, y = _multilabel()
    alone = MultiTaskEstimator(tasks=[ML_TASK], **TINY).fit(x, y)
    predicted = alone.predict(x.head(7))
    assert predicted.shape == (7, 3) and predicted.dtype == np.int64
    assert set(np.unique(predicted)) <= {0, 1}
    proba = alone.predict_proba(x.head(7))
    assert isinstance(proba, np.ndarray) and proba.shape == (7, 3) and proba.dtype.kind == "f"
    assert ((proba > 0) & (proba < 1)).all()
    np.testing.assert_array_equal(predicted, (proba >= 0.5).astype(np.int64))
    assert list(alone.classes_[0]) == ["red", "round", "big"]
    assert 0.0 <= alone.score(x, y) <= 1.0
    # Subset accuracy, as scikit-learn scores a multilabel-indicator target.
    from sklearn.metrics import accuracy_score

    truth = y[["red", "round", "big"]].to_numpy()
    assert alone.score(x, y) == pytest.approx(accuracy_score(truth, alone.predict(x)))
    # Float labels (a missing one among them) come back as floats; its row is not scored.
    floats = y.astype({"red": float})
    floats.loc[0, "red"] = np.nan
    as_float = MultiTaskEstimator(tasks=[ML_TASK], **TINY).fit(x, floats)
    assert as_float.predict(x.head(2)).dtype == np.float64


def test_multilabel_beside_other_tasks() -> None:
    x, y = _multilabel()
    est = MultiTaskEstimator(
        tasks=[{"name": "level", "kind": "regression", "target": "level"}, ML_TASK], **TINY
    ).fit(x, y)
    predicted = est.predict(x.head(5))
    assert predicted.shape == (5, 4)  # the regression value, then the three indicators
    assert all(v in (0, 1) for v in predicted[:, 1:].ravel())
    proba = est.predict_proba(x.head(5))
    assert isinstance(proba, np.ndarray) and proba.shape == (5, 3)
    assert np.isfinite(est.score(x, y))
    with pytest.raises(PolytaskError, match=r"target column 'blue' is not in Y"):
        MultiTaskEstimator(tasks=[{**ML_TASK, "target": ["red", "blue"]}]).fit(x, y)


def test_multilabel_in_grid_search() -> None:
    x, y = _multilabel(120)
    grid = GridSearchCV(
        MultiTaskEstimator(tasks=[ML_TASK], **TINY),
        {"train": [{"epochs": 1, "batch_size": 32}, {"epochs": 2, "batch_size": 32}]},
        cv=2,
        error_score="raise",
    )
    grid.fit(x, y[["red", "round", "big"]])
    assert grid.predict(x.head(3)).shape == (3, 3)


@pytest.mark.parametrize(
    "check",
    [
        estimator_checks.check_classifiers_multilabel_output_format_predict,
        estimator_checks.check_classifiers_multilabel_output_format_predict_proba,
        estimator_checks.check_classifiers_multilabel_representation_invariance,
    ],
    ids=lambda c: c.__name__,
)
def test_sklearn_multilabel_checks(check: Any) -> None:
    """scikit-learn's multilabel checks fit 5-label indicator targets (columns y0..y4 of an
    array Y) on an estimator declaring that multilabel task."""
    labels = [f"y{i}" for i in range(5)]
    check(
        "MultiTaskEstimator",
        MultiTaskEstimator(
            tasks=[{"name": "tags", "kind": "multilabel", "target": labels}], **TINY
        ),
    )
