"""Synthetic multi-task data with controllable task correlations.

Implements the generator of Ma, Zhao, Yi, Chen, Hong and Chi, "Modeling Task Relationships in
Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018, Section 3.2:

1. draw two orthogonal unit vectors ``u1, u2`` in R^d;
2. with scale ``c`` and correlation score ``p`` set ``w1 = c u1`` and
   ``w2 = c (p u1 + sqrt(1 - p^2) u2)``, so that ``cos(w1, w2) = p``;
3. draw ``x ~ N(0, I_d)``;
4. ``y_i = w_i^T x + sum_{j=1..m} sin(alpha_j w_i^T x + beta_j) + eps_i`` with ``alpha_j``,
   ``beta_j`` shared by both tasks and ``eps_i ~ N(0, noise^2)`` (the paper uses ``d = 100``,
   ``m = 10`` and noise variance 0.01, i.e. ``noise = 0.1``).

The sine terms make the tasks non-linear, so the Pearson correlation of the labels is not ``p``
itself; the paper's point is only that it decreases as ``p`` decreases.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pandas as pd


def make_mmoe_synthetic(
    n_samples: int,
    correlation: float,
    *,
    n_features: int = 100,
    n_sines: int = 10,
    noise: float = 0.1,
    scale: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Generate the MMoE synthetic two-task data set.

    Random draws are made in a fixed order that does not depend on ``correlation``: for a given
    seed, frames with different correlations share ``x``, ``u1, u2``, the sine parameters and
    the noise, so they differ only through ``w2``, which makes correlation sweeps controlled.

    Args:
        n_samples: Number of rows, at least 1.
        correlation: The correlation score ``p`` in [-1, 1] (the cosine between ``w1``, ``w2``).
        n_features: Input dimension ``d``, at least 2 (two orthogonal directions are needed).
        n_sines: Number ``m`` of sine terms, at least 0.
        noise: Standard deviation of the label noise, at least 0.
        scale: The scale constant ``c``.
        seed: Seed of :func:`numpy.random.default_rng`, the only source of randomness.

    Returns:
        Columns ``x0`` .. ``x{d-1}`` (float32), ``y_regression`` (task 1, float64), ``y_binary``
        (task 2 thresholded at its median, int64 0/1) and ``y2_raw`` (task 2 before
        thresholding, float64).

    Raises:
        ValueError: if an argument is outside its range.
    """
    _check_generator(n_samples, n_sines, noise)
    # Written as a negated range test so that NaN is rejected too.
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be between -1 and 1, got {correlation}")
    if n_features < 2:
        raise ValueError(f"n_features must be at least 2, got {n_features}")

    rng = np.random.default_rng(seed)

    # Orthonormal columns of a Gaussian matrix's QR factor are a uniformly random orthonormal
    # pair, which is what "two orthogonal unit vectors" asks for.
    basis, _ = np.linalg.qr(rng.standard_normal((n_features, 2)))
    u1, u2 = basis[:, 0], basis[:, 1]
    w1 = scale * u1
    w2 = scale * (correlation * u1 + math.sqrt(max(0.0, 1.0 - correlation**2)) * u2)

    alpha = rng.standard_normal(n_sines)
    beta = rng.standard_normal(n_sines)

    x = rng.standard_normal((n_samples, n_features)).astype(np.float32)
    eps = rng.normal(0.0, noise, size=(2, n_samples))

    # Labels are computed from the float32 features actually returned, so that they are an exact
    # function of the stored inputs rather than of unseen float64 values.
    x64 = x.astype(np.float64)
    y1 = _label(x64 @ w1, alpha, beta) + eps[0]
    y2 = _label(x64 @ w2, alpha, beta) + eps[1]

    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(n_features)])
    labels = pd.DataFrame(
        {
            "y_regression": y1,
            # Median threshold keeps the binary task balanced whatever p, c and m are.
            "y_binary": (y2 > np.median(y2)).astype(np.int64),
            "y2_raw": y2,
        },
        index=frame.index,
    )
    result: pd.DataFrame = pd.concat([frame, labels], axis=1)
    return result


def _check_generator(n_samples: int, n_sines: int, noise: float) -> None:
    """The arguments both generators share, checked alike."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    if n_sines < 0:
        raise ValueError(f"n_sines must be at least 0, got {n_sines}")
    # Negated so that NaN is rejected too.
    if not noise >= 0.0:
        raise ValueError(f"noise must be at least 0, got {noise}")


def _label(
    projection: npt.NDArray[np.float64],
    alpha: npt.NDArray[np.float64],
    beta: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """``w^T x + sum_j sin(alpha_j w^T x + beta_j)`` for a vector of projections ``w^T x``."""
    sines = np.sin(np.outer(projection, alpha) + beta).sum(axis=1)
    result: npt.NDArray[np.float64] = projection + sines
    return result


def correlated_task_weights(
    correlations: npt.ArrayLike,
    n_features: int,
    *,
    scale: float = 1.0,
    rng: np.random.Generator,
) -> npt.NDArray[np.float64]:
    """K task weight vectors in R^d whose pairwise cosines are exactly ``correlations``.

    The K-task form of step 2 of Ma et al. (KDD 2018): with ``U`` a random ``d × K`` matrix of
    orthonormal columns and ``A`` a factor of the correlation matrix (``A Aᵀ = C``, rows of unit
    norm), ``w_k = c U A[k]ᵀ``, so ``cos(w_a, w_b) = A[a]·A[b] = C[a, b]``. ``A`` is the Cholesky
    factor, which for two tasks gives the paper's ``w1 = c u1``,
    ``w2 = c (p u1 + sqrt(1 - p²) u2)``; a singular (semi-definite) ``C``, e.g. two identical
    tasks, is factored through its eigendecomposition instead.

    Returns:
        ``[K, d]`` array, row ``k`` = ``w_k``.

    Raises:
        ValueError: if ``C`` is not a symmetric positive semi-definite matrix with unit diagonal,
            or ``d < K``.
    """
    c = np.asarray(correlations, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 1:
        raise ValueError(f"correlations must be a square K × K matrix, got shape {c.shape}")
    k = c.shape[0]
    if not np.all(np.isfinite(c)):
        raise ValueError("correlations must be finite")
    if not np.allclose(c, c.T, atol=1e-12):
        raise ValueError("correlations must be symmetric")
    if not np.allclose(np.diag(c), 1.0, atol=1e-12):
        raise ValueError("correlations must have a unit diagonal")
    if n_features < k:
        raise ValueError(f"n_features must be at least the number of tasks ({k}), got {n_features}")
    eigenvalues, eigenvectors = np.linalg.eigh(c)
    if eigenvalues.min() < -1e-9:
        raise ValueError(
            f"correlations is not positive semi-definite (smallest eigenvalue "
            f"{eigenvalues.min():.3g}); no set of vectors has these cosines"
        )
    try:
        factor = np.linalg.cholesky(c)
    except np.linalg.LinAlgError:
        factor = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
        # Rows have norm sqrt(C_kk) = 1 up to rounding; make it exact.
        factor /= np.linalg.norm(factor, axis=1, keepdims=True)
    basis, _ = np.linalg.qr(rng.standard_normal((n_features, k)))
    weights: npt.NDArray[np.float64] = scale * (basis @ factor.T).T
    return weights


def make_correlated_tasks(
    n_samples: int,
    correlations: npt.ArrayLike,
    *,
    n_features: int = 100,
    n_sines: int = 10,
    noise: float = 0.1,
    scale: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """K regression tasks with a known task-correlation matrix: the MMoE generator (module
    docstring) with the weight vectors of :func:`correlated_task_weights`.

    ``y_k = w_kᵀx + Σ_j sin(α_j w_kᵀx + β_j) + ε_k`` with ``cos(w_a, w_b) = C[a, b]``, the sine
    parameters shared by all tasks and ``ε_k ~ N(0, noise²)``. As in the two-task generator, the
    labels' own correlations are not ``C`` (the sines bend them) but are ordered by it.

    Draws are made in a fixed order (weight basis, sine parameters, ``x``, noise), so for a seed
    the frames of different ``C`` of the same size share ``x``, the sines and the noise.

    Args:
        n_samples: Number of rows, at least 1.
        correlations: ``K × K`` correlation matrix ``C`` (symmetric, unit diagonal, PSD).
        n_features: Input dimension ``d``, at least K.
        n_sines: Number ``m`` of sine terms, at least 0.
        noise: Standard deviation of the label noise, at least 0.
        scale: The scale constant ``c``.
        seed: Seed of :func:`numpy.random.default_rng`.

    Returns:
        Columns ``x0`` .. ``x{d-1}`` (float32) and ``y0`` .. ``y{K-1}`` (float64).

    Raises:
        ValueError: if an argument is outside its range.
    """
    _check_generator(n_samples, n_sines, noise)
    rng = np.random.default_rng(seed)
    weights = correlated_task_weights(correlations, n_features, scale=scale, rng=rng)
    k = weights.shape[0]
    alpha = rng.standard_normal(n_sines)
    beta = rng.standard_normal(n_sines)
    x = rng.standard_normal((n_samples, n_features)).astype(np.float32)
    eps = rng.normal(0.0, noise, size=(k, n_samples))
    projections = x.astype(np.float64) @ weights.T
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(n_features)])
    labels = pd.DataFrame(
        {f"y{t}": _label(projections[:, t], alpha, beta) + eps[t] for t in range(k)},
        index=frame.index,
    )
    result: pd.DataFrame = pd.concat([frame, labels], axis=1)
    return result


def make_task_indexed(
    n_tasks: int = 20,
    *,
    rows: tuple[int, int] = (25, 100),
    n_features: int = 8,
    spread: float = 0.3,
    offset: float = 1.0,
    noise: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """A task-indexed table (the School / MALSAR layout): every row belongs to one of
    ``n_tasks`` related linear regression tasks, named by the ``task`` column.

    Task ``k`` has weights ``w_k = w + spread · z_k`` around a shared ``w ~ N(0, I_d)``
    (``z_k ~ N(0, I_d)``) and an intercept ``b_k ~ N(0, offset²)``; its rows are
    ``x ~ N(0, I_d)``, ``score = w_kᵀx + b_k + ε`` with ``ε ~ N(0, noise²)``. Task sizes are
    drawn uniformly from ``rows`` (inclusive), so some tasks have few rows: what pooling
    their data through a shared model helps. With the defaults the best possible R² of a
    task is about 0.9 (signal variance ``d (1 + spread²)`` against ``noise² = 1``).

    Returns:
        Columns ``task`` (int64, 1 .. n_tasks), ``x0`` .. ``x{d-1}`` (float32) and ``score``
        (float64), rows grouped by task.

    Raises:
        ValueError: if an argument is outside its range.
    """
    low, high = rows
    if n_tasks < 1 or low < 1 or high < low or n_features < 1:
        raise ValueError("need n_tasks >= 1, 1 <= rows[0] <= rows[1] and n_features >= 1")
    if min(spread, offset, noise) < 0:
        raise ValueError("spread, offset and noise must be >= 0")
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(n_features)
    weights = shared + spread * rng.standard_normal((n_tasks, n_features))
    intercepts = rng.normal(0.0, offset, size=n_tasks)
    sizes = rng.integers(low, high + 1, size=n_tasks)
    task = np.repeat(np.arange(1, n_tasks + 1), sizes)
    x = rng.standard_normal((len(task), n_features))
    score = np.einsum("nd,nd->n", x, weights[task - 1]) + intercepts[task - 1]
    score += rng.normal(0.0, noise, size=len(task))
    frame = pd.DataFrame(x.astype(np.float32), columns=[f"x{i}" for i in range(n_features)])
    frame.insert(0, "task", task.astype(np.int64))
    frame["score"] = score
    result: pd.DataFrame = frame
    return result
