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
