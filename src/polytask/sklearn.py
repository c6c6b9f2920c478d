"""scikit-learn estimators: one multi-task network behind ``fit(X, Y)`` / ``predict(X)``.

Needs scikit-learn (``pip install polytask[sklearn]``); polytask itself never imports this
module, so scikit-learn stays optional.

``MultiTaskEstimator(tasks=..., model=..., train=..., balancer=..., data=...)``: every
constructor argument is a plain value or dict, so ``get_params``/``set_params``, ``clone``,
``Pipeline``, ``cross_validate`` and ``GridSearchCV`` (``param_grid={"train": [...]}``) work.
``X`` is a DataFrame (or an array: columns ``x0, x1, ...``); ``Y`` holds one column per target
(a DataFrame, a 2-D array: columns ``y0, y1, ...``, or a 1-D array/Series for one task).

Tasks. ``tasks=[{"name": "income", "kind": "binary", "target": "income"}, ...]`` (any key of a
``[[tasks]]`` table; ``target`` names a column of ``Y``, or for a ``multilabel`` task lists its
0/1 label columns: ``{"name": "tags", "kind": "multilabel", "target": ["red", "round"]}``), or
``None`` to infer one task per column of ``Y`` (never multilabel) by this rule: a float column
with a non-integral value, or a numeric column with more than ``max_classes`` (20) distinct
values, is ``regression``; a column with two distinct values is ``binary`` (the positive class
is the larger, as ``classes_[1]`` in scikit-learn); any other is ``multiclass``.

Outputs, in scikit-learn's multi-output conventions: ``predict`` gives an array ``(n, columns)``
(``(n,)`` for one single-column task) of labels in ``Y``'s own values and regression values,
one column per task and, for a multilabel task, one per label: its 0/1 indicator matrix (in
the dtype of its columns of ``Y``, so one multilabel task alone predicts exactly a
``multilabel-indicator`` target's shape and dtype); ``predict_proba`` a list with one
``(n, classes)`` array per binary or multiclass task and one ``(n, labels)`` array of each
label's probability per multilabel task (the array itself for one task); ``score`` the mean
over tasks of accuracy (classification; subset accuracy over the fully labelled rows for a
multilabel task, as scikit-learn scores multilabel targets) and R² (regression). A row whose
output is not finite has no label (``None``) and NaN values. ``classes_`` holds one array per
classification task: the class labels, or a multilabel task's label columns.

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

The checks that do apply run in ``tests/test_sklearn.py``, the multilabel ones
(``check_classifiers_multilabel_*``) on an estimator declaring one multilabel task.
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
from polytask.tasks.kinds.columns import binary_column

__all__ = ["MultiTaskEstimator"]

_CLASSIFICATION = ("binary", "multiclass")
_MULTILABEL = "multilabel"


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
        used = list(dict.fromkeys(c for t in tasks for c in t.targets))
        table = pd.concat(
            [features.reset_index(drop=True), targets[used].reset_index(drop=True)], axis=1
        )
        # Labels are read from text, as from a file: remember each class's original value.
        self.label_values_ = {
            t.name: _labels(targets[t.target]) for t in tasks if t.kind in _CLASSIFICATION
        }
        # A multilabel task predicts its 0/1 indicators in the dtype of its columns of Y.
        self.indicator_dtypes_ = {
            t.name: _indicator_dtype(targets[t.targets]) for t in tasks if t.kind == _MULTILABEL
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
        self.classes_ = [
            self._classes(t) for t in self.tasks_ if t.kind in (*_CLASSIFICATION, _MULTILABEL)
        ]
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
        if task.kind == _MULTILABEL:
            return np.array(task.targets, dtype=object)
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
        """Labels (classification tasks, a multilabel task's 0/1 indicators) and values
        (regression tasks): ``(n, columns)``, or ``(n,)`` for one single-column task."""
        blocks = self._blocks(self._predict_frame(X))
        if len(blocks) == 1:
            block = blocks[0]
            return (
                block[:, 0] if block.shape[1] == 1 and self.tasks_[0].kind != _MULTILABEL else block
            )
        return np.column_stack([np.asarray(b, dtype=object) for b in blocks])

    def _blocks(self, frame: pd.DataFrame) -> list[np.ndarray]:
        """Each task's predicted columns as an ``(n, width)`` array: one column per task, one
        per label of a multilabel task."""
        blocks = []
        for task in self.tasks_:
            if task.kind == _MULTILABEL:
                names = [f"{task.name}.{label}" for label in task.targets]
                block = frame[names].to_numpy(dtype=object)
                known = np.array([[not _missing(v) for v in row] for row in block], dtype=bool)
                if known.all():
                    block = block.astype(np.int64).astype(self.indicator_dtypes_[task.name])
                else:
                    block[~known] = None
                blocks.append(block.reshape(len(frame), len(names)))
                continue
            column = frame[task.name].to_numpy()
            if task.kind in _CLASSIFICATION:
                values = self.label_values_[task.name]
                column = np.array(
                    [None if _missing(v) else values.get(str(v), v) for v in column], dtype=object
                )
                if all(v is not None for v in column):
                    column = np.array(column.tolist())  # the labels' own dtype when all known
            blocks.append(column.reshape(len(frame), 1))
        return blocks

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
            elif task.kind == _MULTILABEL:
                names = [f"{task.name}.{label}_proba" for label in task.targets]
                probas.append(frame[names].to_numpy(dtype=np.float64))
        if not probas:
            raise PolytaskError("predict_proba: this estimator has no classification task")
        return probas[0] if len(probas) == 1 else probas

    def score(self, X: Any, Y: Any, sample_weight: Any = None) -> float:
        """Mean over tasks of accuracy (classification; a multilabel task's subset accuracy
        over its fully labelled rows) and R² (regression)."""
        blocks = self._blocks(self._predict_frame(X))
        targets = _frame(Y, "y")
        weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        scores = []
        for task, block in zip(self.tasks_, blocks, strict=True):
            if task.kind == _MULTILABEL:
                scores.append(_subset_accuracy(targets[task.targets], block, weight))
                continue
            truth = targets[task.target].to_numpy()
            guess = block[:, 0]
            if task.kind in _CLASSIFICATION:
                known = np.array([not _missing(v) for v in truth])
                scores.append(
                    accuracy_score(
                        [str(v) for v in truth[known]],
                        [str(v) for v in guess[known]],
                        sample_weight=None if weight is None else weight[known],
                    )
                )
            else:
                scores.append(
                    r2_score(truth.astype(float), guess.astype(float), sample_weight=weight)
                )
        return float(np.mean(scores))


def _subset_accuracy(truth: pd.DataFrame, guess: np.ndarray, weight: np.ndarray | None) -> float:
    """The share of the rows whose every label is known in which every label is predicted
    (an unpredicted label is wrong); NaN when no row is fully labelled."""
    labels = [binary_column(truth[c], "Y") for c in truth.columns]
    positive = np.stack([p for p, _ in labels], axis=1) > 0.5
    known = np.stack([v for _, v in labels], axis=1).all(axis=1)
    if not known.any():
        return float("nan")
    predicted = np.array([[not _missing(v) and int(v) == 1 for v in row] for row in guess])
    decided = np.array([[not _missing(v) for v in row] for row in guess], dtype=bool)
    hit = ((predicted == positive) & decided).all(axis=1)
    return float(np.average(hit[known], weights=None if weight is None else weight[known]))


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
    columns = [str(c) for c in target] if isinstance(target, list | tuple) else [target]
    for column in columns:
        if column not in targets.columns:
            raise PolytaskError(
                f"task {spec.get('name')!r}: target column {column!r} is not in Y "
                f"(columns: {', '.join(map(str, targets.columns))})"
            )
    if isinstance(target, list | tuple):
        target = columns
    rest = {k: v for k, v in spec.items() if k not in ("name", "kind", "target")}
    if spec["kind"] == "binary" and "positive" not in rest and "classes" not in rest:
        # scikit-learn's convention: the larger of the two labels is the positive class.
        rest["positive"] = _positive(targets[target])
    return Task(
        str(spec["name"]),
        str(spec["kind"]),
        target=target if isinstance(target, list) else str(target),
        **rest,
    )


def _positive(column: pd.Series) -> str:
    """The larger label of a two-label column, as polytask reads it."""
    return list(_labels(pd.Series(sorted(pd.unique(column.dropna())))))[-1]


def _labels(column: pd.Series) -> dict[str, Any]:
    """Each label's text as polytask reads it (``1.0`` is ``"1"``) -> its value in ``Y``."""
    present = column.dropna()
    return dict(zip(as_text(present).tolist(), present.tolist(), strict=True))


def _indicator_dtype(columns: pd.DataFrame) -> np.dtype[Any]:
    """The dtype a multilabel task's indicators are predicted in: the common type of its 0/1
    columns of ``Y`` when each is boolean or numeric (float when a label is missing), else
    int64 (text labels such as ``"yes"``)."""
    dtypes = list(columns.dtypes)
    if all(isinstance(d, np.dtype) and d.kind in "biuf" for d in dtypes):
        return np.result_type(*dtypes)
    return np.dtype(np.int64)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value is pd.NA
