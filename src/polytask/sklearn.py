"""scikit-learn estimators: one multi-task network behind ``fit(X, Y)`` / ``predict(X)``.

Needs scikit-learn (``pip install polytask[sklearn]``); polytask itself never imports this
module, so scikit-learn stays optional.

``MultiTaskEstimator(tasks=..., model=..., train=..., balancer=..., data=...)``: every
constructor argument is a plain value or dict, so ``get_params``/``set_params``, ``clone``,
``Pipeline``, ``cross_validate`` and ``GridSearchCV`` (``param_grid={"train": [...]}``) work.
``X`` is a DataFrame (or an array: columns ``x0, x1, ...``); ``Y`` holds one column per target
(a DataFrame, a 2-D array: columns ``y0, y1, ...``, or a 1-D array/Series for one task).

Tasks. ``tasks=[{"name": "income", "kind": "binary", "target": "income"}, ...]`` (any key of a
``[[tasks]]`` table; ``target`` names a column of ``Y``), or ``None`` to infer one task per
column of ``Y`` by this rule: a float column with a non-integral value, or a numeric column with
more than ``max_classes`` (20) distinct values, is ``regression``; a column with two distinct
values is ``binary`` (the positive class is the larger, as ``classes_[1]`` in scikit-learn);
any other is ``multiclass``.

Outputs, in scikit-learn's multi-output conventions: ``predict`` gives an array ``(n, tasks)``
(``(n,)`` for one task) of labels in ``Y``'s own values and regression values;
``predict_proba`` a list with one ``(n, classes)`` array per classification task (the array
itself for one task); ``score`` the mean over tasks of accuracy (classification) and R²
(regression). A row whose output is not finite has no label (``None``) and NaN values.

scikit-learn's estimator checks (``check_estimator``) that cannot apply, and why:

- the classifier/regressor checks (``check_classifiers_*``, ``check_regressors_*``,
  ``check_supervised_y_2d``, ``check_classifier_multioutput``...): the estimator is neither a
  classifier nor a regressor but both at once, one kind per task, so it carries no single
  ``_estimator_type`` and the checks' single-output expectations (``classes_`` as one array,
  ``predict`` of the training labels' dtype) do not hold for a mixed set of tasks;
- checks that fit on a handful of rows (``check_fit2d_1sample``, ``check_fit2d_1feature``
  with 1-3 rows): training holds out a validation split, which needs a few rows per split;
- checks that expect fitting on the same data to give exactly the same model across processes
  and thread counts are met only on one thread (the network trains in float32).

The checks that do apply run in ``tests/test_sklearn.py``.
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
import pandas as pd

# scikit-learn is an optional dependency (the ``sklearn`` extra): only this module needs it,
# and nothing in polytask imports this module.
from sklearn.base import BaseEstimator
from sklearn.metrics import accuracy_score, r2_score
from sklearn.utils.validation import check_is_fitted

from polytask.data.preprocess import as_text
from polytask.errors import PolytaskError
from polytask.run.pipeline import fit as fit_model
from polytask.run.predictor import Predictor
from polytask.tasks import Task

__all__ = ["MultiTaskEstimator"]

_CLASSIFICATION = ("binary", "multiclass")


class MultiTaskEstimator(BaseEstimator):  # type: ignore[misc]
    """One polytask network for every column of ``Y`` (see the module docstring).

    Parameters: ``tasks`` (list of task dicts, or None to infer them from ``Y``), ``model``,
    ``train``, ``balancer`` (the config sections as dicts), ``data`` (extra ``[data]``
    options, e.g. ``{"categorical": ["code"]}``), ``validation_fraction`` (rows held out to
    pick the best epoch), ``max_classes`` (the inference rule's limit), ``random_state``.
    """

    def __init__(
        self,
        tasks: list[dict[str, Any]] | None = None,
        model: dict[str, Any] | None = None,
        train: dict[str, Any] | None = None,
        balancer: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        validation_fraction: float = 0.15,
        max_classes: int = 20,
        random_state: int = 0,
    ) -> None:
        self.tasks = tasks
        self.model = model
        self.train = train
        self.balancer = balancer
        self.data = data
        self.validation_fraction = validation_fraction
        self.max_classes = max_classes
        self.random_state = random_state

    # -- fitting -------------------------------------------------------------------------
    def fit(self, X: Any, Y: Any) -> MultiTaskEstimator:
        features = _frame(X, "x")
        targets = _frame(Y, "y")
        if len(features) != len(targets):
            raise PolytaskError(f"X has {len(features)} rows but Y has {len(targets)}")
        clash = sorted(set(features.columns) & set(targets.columns))
        if clash:
            raise PolytaskError(f"column {clash[0]!r} is both in X and in Y; rename one")
        declared = self.tasks if self.tasks is not None else self._infer_tasks(targets)
        tasks = [_task(spec, targets) for spec in declared]
        # Only the targets the tasks read: any other column of Y would become a feature.
        used = list(dict.fromkeys(str(t.target) for t in tasks))
        table = pd.concat(
            [features.reset_index(drop=True), targets[used].reset_index(drop=True)], axis=1
        )
        # Labels are read from text, as from a file: remember each class's original value.
        self.label_values_ = {
            t.name: _labels(targets[t.target]) for t in tasks if t.kind in _CLASSIFICATION
        }
        options = {
            "split": {"method": "random", "val": self.validation_fraction, "test": 0.0},
            **(self.data or {}),
        }
        train = {"progress": False, **(self.train or {})}
        with tempfile.TemporaryDirectory(prefix="polytask-sklearn-") as out:
            result = fit_model(
                table,
                tasks,
                out=out,
                seed=self.random_state,
                baselines=False,
                data_options=options,
                model=self.model,
                balancer=self.balancer,
                train=train,
                quiet=True,
            )
        self.predictor_: Predictor = result.predictor
        self.tasks_ = self.predictor_.tasks
        self.feature_names_in_ = np.array(features.columns, dtype=object)
        self.n_features_in_ = features.shape[1]
        self.classes_ = [self._classes(t) for t in self.tasks_ if t.kind in _CLASSIFICATION]
        return self

    def _infer_tasks(self, targets: pd.DataFrame) -> list[dict[str, Any]]:
        specs = []
        for column in targets.columns:
            values = targets[column].dropna()
            distinct = pd.unique(values)
            numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(
                values
            )
            integral = not numeric or bool(np.all(np.mod(values.to_numpy(float), 1) == 0))
            spec: dict[str, Any] = {"name": str(column), "target": str(column)}
            if numeric and (not integral or len(distinct) > self.max_classes):
                spec["kind"] = "regression"
            elif len(distinct) == 2:
                spec["kind"] = "binary"
                spec["positive"] = _positive(targets[column])
            else:
                spec["kind"] = "multiclass"
            specs.append(spec)
        return specs

    def _classes(self, task: Task) -> np.ndarray:
        values = self.label_values_[task.name]
        return np.array([values.get(c, c) for c in task.classes or []], dtype=object)

    # -- predicting ----------------------------------------------------------------------
    def _predict_frame(self, X: Any) -> pd.DataFrame:
        check_is_fitted(self, "predictor_")
        features = _frame(X, "x")
        if features.shape[1] != self.n_features_in_:
            raise PolytaskError(
                f"X has {features.shape[1]} features, but this estimator was fitted with "
                f"{self.n_features_in_}"
            )
        return self.predictor_.predict(features.reset_index(drop=True))

    def predict(self, X: Any) -> np.ndarray:
        """Labels (classification tasks) and values (regression tasks): ``(n, tasks)``."""
        frame = self._predict_frame(X)
        columns = []
        for task in self.tasks_:
            column = frame[task.name].to_numpy()
            if task.kind in _CLASSIFICATION:
                values = self.label_values_[task.name]
                column = np.array(
                    [None if _missing(v) else values.get(str(v), v) for v in column], dtype=object
                )
                if all(v is not None for v in column):
                    column = np.array(column.tolist())  # the labels' own dtype when all known
            columns.append(column)
        if len(columns) == 1:
            return columns[0]
        return np.column_stack([np.asarray(c, dtype=object) for c in columns])

    def predict_proba(self, X: Any) -> np.ndarray | list[np.ndarray]:
        """Class probabilities of each classification task, columns in ``classes_`` order."""
        frame = self._predict_frame(X)
        probas = []
        for task in self.tasks_:
            if task.kind == "binary":
                p = frame[f"{task.name}_proba"].to_numpy(dtype=np.float64)
                probas.append(np.column_stack([1.0 - p, p]))
            elif task.kind == "multiclass":
                names = [f"{task.name}_proba_{c}" for c in task.classes or []]
                probas.append(frame[names].to_numpy(dtype=np.float64))
        if not probas:
            raise PolytaskError("predict_proba: this estimator has no classification task")
        return probas[0] if len(probas) == 1 else probas

    def score(self, X: Any, Y: Any, sample_weight: Any = None) -> float:
        """Mean over tasks of accuracy (classification) and R² (regression)."""
        predicted = self.predict(X)
        if predicted.ndim == 1:
            predicted = predicted[:, None]
        targets = _frame(Y, "y")
        scores = []
        for j, task in enumerate(self.tasks_):
            truth = targets[task.target].to_numpy()
            guess = predicted[:, j]
            if task.kind in _CLASSIFICATION:
                known = np.array([not _missing(v) for v in truth])
                scores.append(
                    accuracy_score(
                        [str(v) for v in truth[known]],
                        [str(v) for v in guess[known]],
                        sample_weight=None if sample_weight is None else sample_weight[known],
                    )
                )
            else:
                scores.append(
                    r2_score(truth.astype(float), guess.astype(float), sample_weight=sample_weight)
                )
        return float(np.mean(scores))


def _frame(data: Any, prefix: str) -> pd.DataFrame:
    """``data`` as a DataFrame: a frame as is, a Series as one column, an array's columns
    named ``{prefix}0, {prefix}1, ...``."""
    frame: pd.DataFrame
    if isinstance(data, pd.DataFrame):
        frame = data.rename(columns=str)
        return frame
    if isinstance(data, pd.Series):
        frame = data.to_frame(str(data.name) if data.name is not None else f"{prefix}0")
        return frame
    array = np.asarray(data)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise PolytaskError(f"expected a table (2-D), got an array of shape {array.shape}")
    frame = pd.DataFrame(array, columns=[f"{prefix}{i}" for i in range(array.shape[1])])
    return frame


def _task(spec: dict[str, Any], targets: pd.DataFrame) -> Task:
    target = spec.get("target", spec.get("name"))
    if target not in targets.columns:
        raise PolytaskError(
            f"task {spec.get('name')!r}: target column {target!r} is not in Y "
            f"(columns: {', '.join(map(str, targets.columns))})"
        )
    rest = {k: v for k, v in spec.items() if k not in ("name", "kind", "target")}
    if spec["kind"] == "binary" and "positive" not in rest and "classes" not in rest:
        # scikit-learn's convention: the larger of the two labels is the positive class.
        rest["positive"] = _positive(targets[target])
    return Task(str(spec["name"]), str(spec["kind"]), target=str(target), **rest)


def _positive(column: pd.Series) -> str:
    """The larger label of a two-label column, as polytask reads it."""
    return list(_labels(pd.Series(sorted(pd.unique(column.dropna())))))[-1]


def _labels(column: pd.Series) -> dict[str, Any]:
    """Each label's text as polytask reads it (``1.0`` is ``"1"``) -> its value in ``Y``."""
    present = column.dropna()
    return dict(zip(as_text(present).tolist(), present.tolist(), strict=True))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value is pd.NA
