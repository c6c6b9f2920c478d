"""How the tasks relate: lookahead task affinity, gradient cosines, and a suggested grouping.

Lookahead inter-task affinity (Fifty, Amid, Zhao, Yu, Anil and Finn, "Efficiently Identifying
Task Groupings for Multi-Task Learning", NeurIPS 2021, "TAG"): at a training step
``t`` with batch ``X^t``, take a step of the *shared* parameters with task i's gradient alone,

    θ_s^{t+1|i} = θ_s^t − η ∇_{θ_s} L_i(X^t, θ_s^t, θ_i^t),

and see how task j's loss on the *same* batch changes (its own head ``θ_j`` unchanged):

    Z^t_{i→j} = 1 − L_j(X^t, θ_s^{t+1|i}, θ_j^t) / L_j(X^t, θ_s^t, θ_j^t).

Positive: task i's update helps task j; negative: it hurts. ``Z_{i→j}`` is the mean of ``Z^t``
over the measured steps (every ``every`` steps of an ordinary joint training). The step is the
plain SGD step of the paper's definition, with ``η`` the optimiser's current learning rate
(the real AdamW step, clipping and the balancer's weights are deliberately not part of it:
the quantity is a property of the tasks' gradients, not of the optimiser). As in the paper,
``Z`` scales with ``η``: under a decaying schedule late steps weigh less in the mean. Each
lookahead pass replays the same dropout masks as the base pass (same RNG state), normalisation
layers see the same batch, and the parameters, buffers and RNG are restored bit for bit
afterwards, so a measured run trains exactly as an unmeasured one.

The gradient cosine matrix comes from the same per-task gradients (their Gramian), averaged over
the same steps. :func:`affinity` runs a training (or a short *probe*: ``PROBE_EPOCHS`` epochs)
with the measurement, suggests groups with :func:`polytask.studies.affinity.grouping.search_groups`,
and writes ``DIR/affinity.json`` plus the measured run in ``DIR/run/``.

:func:`pair_search` is the ground truth the affinity is checked against: it actually trains
every task alone and every pair together and derives the pairwise gains.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from rich.table import Table
from torch import Tensor, nn

from polytask.balance.diagnostics import TaskGramian, gradient_gramian
from polytask.config import RunConfig, load_config
from polytask.data.prepare import PreparedData, prepare_data
from polytask.errors import ConfigError
from polytask.run.build import train_model
from polytask.run.pipeline import run
from polytask.state_io import atomic_write_text, to_json
from polytask.studies.affinity.config import AffinityConfig
from polytask.studies.affinity.grouping import Grouping, SearchMethod, search_groups
from polytask.studies.backends import Backend, LocalBackend

if TYPE_CHECKING:
    from polytask.data.tensors import Batch
    from polytask.train.trainer import EpochRecord, Trainer

#: Epochs of a probe (``probe=True``), unless the run config sets ``affinity.probe_epochs``. On
#: the 4-task synthetic set of the tests, a 1-epoch probe ranked the task pairs about as well as
#: 6 epochs (Spearman 0.77-0.94 per seed, exact on the mean over 6 seeds). With linear heads
#: (no hidden layer) the first 3 epochs ranked them no better than chance (the heads' random
#: initial signs decide the sign of the shared gradient) and only longer training recovered the
#: order, so a probe is a screen, not a verdict.
PROBE_EPOCHS = 1
#: Default measurement interval in steps: every step in a probe, every 5th otherwise.
PROBE_EVERY = 1
DEFAULT_EVERY = 5
#: What :func:`pair_search` writes into its ``out`` directory.
PAIR_SEARCH_FILE = "pair_search.json"
#: Default budget of groups (models) for the suggested grouping.
DEFAULT_MAX_GROUPS = 3

METHOD = (
    "lookahead inter-task affinity (Fifty et al., NeurIPS 2021): Z_{i->j} = 1 - "
    "L_j(theta_s - lr * grad L_i) / L_j(theta_s) on the same batch, SGD lookahead of the shared "
    "parameters with the optimiser's current learning rate, averaged over measured steps"
)


@dataclass(frozen=True)
class StepAffinity:
    """One measured step: ``z[a, b]`` = ``Z_{names[a] → names[b]}`` and the Gramian of the
    tasks' shared-parameter gradients."""

    names: list[str]
    z: npt.NDArray[np.float64]
    gramian: TaskGramian


def step_affinity(
    model: nn.Module,
    loss_of: Callable[[], dict[str, Tensor]],
    params: Sequence[nn.Parameter],
    lr: float,
) -> StepAffinity:
    """Lookahead affinity of one batch (module docstring).

    ``loss_of`` runs the forward pass on the batch and returns the present tasks' losses;
    ``params`` are the shared parameters; ``lr`` the lookahead step size. ``model``'s
    parameters, buffers (e.g. batch-norm statistics) and the global RNG are left exactly as they
    were, and ``.grad`` is not touched.
    """
    params = [p for p in params if p.requires_grad]
    buffers = [b.detach().clone() for b in model.buffers()]
    originals = [p.detach().clone() for p in params]
    with torch.random.fork_rng(devices=[]):
        rng = torch.get_rng_state()
        losses = loss_of()
        names = list(losses)
        k = len(names)
        grads = [
            torch.autograd.grad(losses[n], params, retain_graph=a + 1 < k, allow_unused=True)
            for a, n in enumerate(names)
        ]
        base = [float(losses[n].detach()) for n in names]
        z = np.full((k, k), math.nan)
        try:
            with torch.no_grad():
                for a in range(k):
                    for p, p0, g in zip(params, originals, grads[a], strict=True):
                        p.copy_(p0 if g is None else p0 - lr * g)
                    # Same dropout masks as the base pass: only θ_s differs.
                    torch.set_rng_state(rng)
                    after = loss_of()
                    for b, name in enumerate(names):
                        if name in after and base[b] > 0.0:
                            z[a, b] = 1.0 - float(after[name]) / base[b]
        finally:
            with torch.no_grad():
                for p, p0 in zip(params, originals, strict=True):
                    p.copy_(p0)
                for buffer, saved in zip(model.buffers(), buffers, strict=True):
                    buffer.copy_(saved)
    return StepAffinity(names, z, gradient_gramian(names, grads, params))


class _Mean:
    """Running K × K means with per-entry counts."""

    def __init__(self, k: int) -> None:
        self.total = np.zeros((k, k))
        self.count = np.zeros((k, k), dtype=np.int64)

    def add(self, index: list[int], values: npt.NDArray[np.float64]) -> None:
        sub = np.ix_(index, index)
        known = np.isfinite(values)
        self.total[sub] += np.where(known, values, 0.0)
        self.count[sub] += known

    def mean(self) -> npt.NDArray[np.float64]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.total / np.maximum(self.count, 1), math.nan)


class AffinityProbe:
    """Trainer step hook measuring lookahead affinity and gradient cosines every ``every``
    steps (pass it in ``callbacks``); ``lr`` overrides the lookahead step size."""

    def __init__(self, tasks: Sequence[str], every: int = DEFAULT_EVERY, lr: float | None = None):
        if every < 1:
            raise ConfigError(f"affinity: every must be at least 1, got {every}")
        if lr is not None and not lr > 0.0:
            raise ConfigError(f"affinity: lr must be positive, got {lr}")
        self.tasks = list(tasks)
        self.every = every
        self.lr = lr
        self._index = {t: i for i, t in enumerate(self.tasks)}
        k = len(self.tasks)
        self.steps_measured = 0
        self._affinity, self._cosine = _Mean(k), _Mean(k)
        self._epoch_affinity, self._epoch_cosine = _Mean(k), _Mean(k)
        #: Per-epoch means: ``{"epoch", "affinity", "gradient_cosine"}`` (K × K lists).
        self.over_training: list[dict[str, Any]] = []

    def before_step(self, trainer: Trainer, batch: Batch) -> None:
        if trainer.step % self.every:
            return
        model = trainer.model
        shared = model.shared_parameters()
        if not shared:
            # Fail at the first step rather than after a whole training.
            arch = type(getattr(model, "architecture", model)).__name__
            raise ConfigError(
                f"affinity: {arch} shares no parameters, so no task's step reaches another "
                "task; use an architecture with shared layers (e.g. 'hard')"
            )
        lr = self.lr if self.lr is not None else float(trainer.optimizer.param_groups[0]["lr"])
        if not lr > 0.0:
            return  # no step, nothing to look ahead to

        def loss_of() -> dict[str, Tensor]:
            outputs = model(batch.inputs)
            return trainer.loss_fn(outputs, batch, trainer.progress)

        self.add(step_affinity(model, loss_of, shared, lr))

    def add(self, measured: StepAffinity) -> None:
        """Fold one measured step into the running means."""
        if not measured.names:
            return
        index = [self._index[n] for n in measured.names]
        k = len(index)
        cosine = np.eye(k)
        for (a, b), value in measured.gramian.cosines().items():
            i, j = measured.names.index(a), measured.names.index(b)
            cosine[i, j] = cosine[j, i] = value
        norms = measured.gramian.norms()
        for i, name in enumerate(measured.names):
            if not norms[name] > 0.0:  # no direction: no cosine with anything, itself included
                cosine[i, :] = cosine[:, i] = math.nan
        for store in (self._affinity, self._epoch_affinity):
            store.add(index, measured.z)
        for store in (self._cosine, self._epoch_cosine):
            store.add(index, cosine)
        self.steps_measured += 1

    def __call__(self, trainer: Trainer, record: EpochRecord) -> None:
        self.over_training.append(
            {
                "epoch": record.epoch,
                "affinity": self._epoch_affinity.mean().tolist(),
                "gradient_cosine": self._epoch_cosine.mean().tolist(),
            }
        )
        k = len(self.tasks)
        self._epoch_affinity, self._epoch_cosine = _Mean(k), _Mean(k)

    def affinity(self) -> npt.NDArray[np.float64]:
        """Mean ``Z[i, j]`` over the measured steps (NaN where never measured)."""
        return self._affinity.mean()

    def gradient_cosine(self) -> npt.NDArray[np.float64]:
        """Mean gradient cosine of each pair over the measured steps (diagonal 1)."""
        return self._cosine.mean()


@dataclass
class AffinityResult:
    """What :func:`affinity` measured; :meth:`to_dict` is ``affinity.json``."""

    tasks: list[str]
    affinity: npt.NDArray[np.float64]
    gradient_cosine: npt.NDArray[np.float64]
    over_training: list[dict[str, Any]]
    grouping: Grouping
    epochs: int
    probe: bool
    steps_measured: int
    every: int
    out_dir: Path | None = None
    #: The fixed lookahead step size, if one replaced the optimiser's learning rate.
    lr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        step = "" if self.lr is None else f", lookahead learning rate fixed at {self.lr:g}"
        return {
            "kind": "polytask-affinity",
            "tasks": self.tasks,
            "method": f"{METHOD} (every {self.every} steps{step})",
            "epochs": self.epochs,
            "probe": self.probe,
            "steps_measured": self.steps_measured,
            "affinity": self.affinity.tolist(),
            "gradient_cosine": self.gradient_cosine.tolist(),
            "over_training": self.over_training,
            "grouping": self.grouping.to_dict(),
        }

    def table(self) -> Table:
        """The affinity matrix as a rich table (row: the task whose step is taken)."""
        table = Table(title=f"task affinity Z(i→j) ({self.steps_measured} measured steps, ×10⁻³)")
        table.add_column("step of \\ loss of")
        for name in self.tasks:
            table.add_column(name, justify="right")
        for i, name in enumerate(self.tasks):
            cells = ["—" if not math.isfinite(v) else f"{1e3 * v:+.3f}" for v in self.affinity[i]]
            table.add_row(name, *cells)
        return table

    def pair_scores(self) -> dict[tuple[str, str], float]:
        """Symmetrised affinity ``(Z_ij + Z_ji) / 2`` of each pair ``i`` before ``j``."""
        z = self.affinity
        return {
            (a, b): float((z[i, j] + z[j, i]) / 2)
            for (i, a), (j, b) in itertools.combinations(enumerate(self.tasks), 2)
        }


def _as_config(config: RunConfig | str | Path, overrides: Sequence[str] | None) -> RunConfig:
    if isinstance(config, RunConfig):
        if overrides:
            raise ConfigError("affinity: overrides apply to a config file; edit the RunConfig")
        return config
    return load_config(config, list(overrides or []))


def _with_epochs(cfg: RunConfig, epochs: int | None) -> RunConfig:
    train = cfg.train if epochs is None else cfg.train.model_copy(update={"epochs": epochs})
    return cfg.model_copy(update={"train": train, "baselines": False})


def affinity(
    config: RunConfig | str | Path,
    out: str | Path | None = None,
    *,
    frame: pd.DataFrame | None = None,
    probe: bool = False,
    epochs: int | None = None,
    max_groups: int | None = None,
    every: int | None = None,
    lr: float | None = None,
    search: SearchMethod | None = None,
    alone_score: float | None = None,
    overrides: Sequence[str] | None = None,
    quiet: bool = False,
) -> AffinityResult:
    """Train the config's multi-task model while measuring task affinity; suggest groups.

    The run config's ``[affinity]`` section (:class:`polytask.config.AffinityConfig`) sets
    ``every``, ``lr``, ``max_groups``, the probe's epochs, ``search`` and ``alone_score``; an
    argument given here (not ``None``) overrides its key, and a key set in neither place takes
    the default below.

    Args:
        config: A :class:`RunConfig` or the path of a TOML config.
        out: Directory for ``affinity.json`` and the measured run (``out/run``, replaced if it
            exists); nothing is written without it.
        frame: The table, instead of the config's ``data.path``.
        probe: A short training of ``affinity.probe_epochs`` (default ``PROBE_EPOCHS``) epochs
            unless ``epochs`` is given, measured at every step unless ``every`` is set.
        epochs: Training epochs (default: the config's, or the probe's).
        max_groups: Budget of groups for the suggestion (default ``min(K, 3)``).
        every: Measure every N steps (default: 1 in a probe, 5 otherwise).
        lr: Lookahead step size (default: the optimiser's current learning rate).
        search: Grouping search method (:func:`~polytask.studies.affinity.grouping.search_groups`;
            default ``auto``).
        alone_score: Score of a task served by a group of one (default: not allowed, the
            paper's rule; see :mod:`polytask.studies.affinity.grouping`).
        overrides: ``key=value`` overrides of a config file (``affinity.every=2`` included).
        quiet: No progress output.
    """

    cfg = _as_config(config, overrides)
    names = cfg.named_tasks("affinity")
    if len(names) < 2:
        raise ConfigError("affinity needs at least two tasks")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"affinity: epochs must be at least 1, got {epochs}")
    section = cfg.section("affinity", AffinityConfig)
    max_groups = _first(max_groups, section.max_groups)
    search, alone_score = _search_options(search, alone_score, cfg)
    if max_groups is not None and max_groups < 1:
        raise ConfigError(f"affinity: max_groups must be at least 1, got {max_groups}")
    if epochs is None and probe:
        epochs = min(_first(section.probe_epochs, PROBE_EPOCHS), cfg.train.epochs)
    every = _first(every, section.every, PROBE_EVERY if probe else DEFAULT_EVERY)
    lr = _first(lr, section.lr)
    cfg = _with_epochs(cfg, epochs)
    meter = AffinityProbe(names, every=every, lr=lr)
    out_dir = Path(out) if out is not None else None
    result = run(
        cfg,
        frame=frame,
        out=out_dir / "run" if out_dir is not None else None,
        overwrite=True,
        quiet=quiet,
        callbacks=[meter],
    )
    if meter.steps_measured == 0:
        raise ConfigError("affinity: no training step was measured")
    z = meter.affinity()
    budget = max_groups if max_groups is not None else min(len(names), DEFAULT_MAX_GROUPS)
    # A pair never measured together (no batch labelled both) has no affinity; it counts as
    # none (0) for the grouping and stays null in the file.
    grouping = search_groups(
        np.nan_to_num(z, nan=0.0), budget, names, alone_score=alone_score, method=search
    )
    measured = AffinityResult(
        tasks=names,
        affinity=z,
        gradient_cosine=meter.gradient_cosine(),
        over_training=meter.over_training,
        grouping=grouping,
        epochs=len(result.fit.history),
        probe=probe,
        steps_measured=meter.steps_measured,
        every=every,
        out_dir=out_dir,
        lr=lr,
    )
    if out_dir is not None:
        atomic_write_text(out_dir / "affinity.json", to_json(measured.to_dict()) + "\n")
    return measured


def _first(*values: Any) -> Any:
    """The first value that is not ``None`` (an argument, then the config, then a default)."""
    return next((v for v in values if v is not None), None)


def _search_options(
    search: SearchMethod | None, alone_score: float | None, cfg: RunConfig
) -> tuple[SearchMethod, float | None]:
    """The grouping search method and ``alone_score``: the argument, else ``[affinity]``."""
    if search is not None and search not in get_args(SearchMethod):
        raise ConfigError(
            f"affinity: unknown search {search!r}; valid choices: "
            f"{', '.join(get_args(SearchMethod))}"
        )
    if alone_score is not None and not math.isfinite(alone_score):
        raise ConfigError(f"affinity: alone_score must be finite, got {alone_score}")
    section = cfg.section("affinity", AffinityConfig)
    return _first(search, section.search), _first(alone_score, section.alone_score)


@dataclass
class PairSearch:
    """Every task trained alone and every pair trained together (validation losses at the
    checkpoint selected on validation) and the gains derived from them.

    ``gains[i, j] = (L_j(alone) − L_j(with i)) / L_j(alone)``: the relative reduction of task j's
    validation loss from training it with task i (positive = i helps j), the same orientation
    as the affinity matrix (row = the partner, column = the task measured); diagonal 0.
    """

    tasks: list[str]
    alone: dict[str, float]
    pairs: dict[str, dict[str, float]]
    gains: npt.NDArray[np.float64]
    grouping: Grouping
    epochs: int = 0
    runs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "polytask-pair-search",
            "tasks": self.tasks,
            "epochs": self.epochs,
            "alone": self.alone,
            "pairs": self.pairs,
            "gains": self.gains.tolist(),
            "grouping": self.grouping.to_dict(),
        }


class TrainSubset:
    """One training of the pair search as a picklable callable, which a
    :class:`~polytask.studies.backends.Backend` calls wherever it runs: the config's model on a
    subset of the tasks (named), trained from the run seed; returns the validation losses at
    the epoch selected on validation. In this process the data is prepared once for every
    call; a pickled copy (another process, a Ray task) prepares it again from the config and
    the frame, to the same split and tensors."""

    def __init__(self, cfg: RunConfig, frame: pd.DataFrame | None, quiet: bool) -> None:
        self.cfg, self.frame, self.quiet = cfg, frame, quiet
        self._data: PreparedData | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg, "frame": self.frame, "quiet": True, "_data": None}

    def data(self) -> PreparedData:
        if self._data is None:
            self._data = prepare_data(self.cfg, self.frame)
        return self._data

    def __call__(self, names: tuple[str, ...]) -> dict[str, float]:
        data = self.data()
        by_name = {t.name: t for t in data.tasks}
        subset = [by_name[n] for n in names]
        if len(subset) == 1:  # alone: the task's full loss, whatever its weight in the config
            subset = [dataclasses.replace(subset[0], weight=1.0)]
        _, fit = train_model(self.cfg, data, subset, None, quiet=self.quiet)
        record = fit.history[fit.best_epoch - 1]
        return {t.name: float(record.val_loss[t.name]) for t in subset}


def pair_search(
    config: RunConfig | str | Path,
    *,
    frame: pd.DataFrame | None = None,
    epochs: int | None = None,
    max_groups: int | None = None,
    search: SearchMethod | None = None,
    alone_score: float | None = None,
    overrides: Sequence[str] | None = None,
    quiet: bool = True,
    backend: Backend | None = None,
    out: str | Path | None = None,
) -> PairSearch:
    """Exhaustive pair search: train each task alone and each pair of tasks together (K + K(K-1)/2
    trainings with the config's model, balancer and budget; same data split and seed), and
    choose groups from the measured gains with the same objective as the affinity (for gains,
    the higher-order approximation of Standley et al., ICML 2020; see
    :mod:`polytask.studies.affinity.grouping`). ``max_groups``, ``search`` and
    ``alone_score`` default to the config's ``[affinity]`` keys, as in :func:`affinity`.
    ``backend`` is where the trainings execute (:mod:`polytask.studies.backends`; default: one
    after the other in this process); each is seeded as in this process. With ``out``, the
    result is also written to ``out/pair_search.json``."""

    cfg = _with_epochs(_as_config(config, overrides), epochs)
    max_groups = _first(max_groups, cfg.section("affinity", AffinityConfig).max_groups)
    search, alone_score = _search_options(search, alone_score, cfg)
    train = TrainSubset(cfg, frame, quiet)
    data = train.data()
    tasks = data.tasks
    names = [t.name for t in tasks]
    if len(names) < 2:
        raise ConfigError("pair search needs at least two tasks")
    k = len(names)
    pair_index = list(itertools.combinations(range(k), 2))
    # Every training is independent (each seeds itself): K alone, then every pair.
    subsets = [(name,) for name in names] + [(names[i], names[j]) for i, j in pair_index]
    losses: dict[int, dict[str, float]] = dict((backend or LocalBackend()).map(train, subsets))
    alone = {name: losses[a][name] for a, name in enumerate(names)}
    gains = np.zeros((k, k))
    pairs: dict[str, dict[str, float]] = {}
    for n, (i, j) in enumerate(pair_index):
        together = losses[k + n]
        pairs[f"{names[i]}|{names[j]}"] = together
        gains[i, j] = (alone[names[j]] - together[names[j]]) / alone[names[j]]
        gains[j, i] = (alone[names[i]] - together[names[i]]) / alone[names[i]]
    budget = max_groups if max_groups is not None else min(k, DEFAULT_MAX_GROUPS)
    grouping = search_groups(gains, budget, names, alone_score=alone_score, method=search)
    result = PairSearch(
        names, alone, pairs, gains, grouping, epochs=cfg.train.epochs, runs=k + len(pairs)
    )
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out) / PAIR_SEARCH_FILE, to_json(result.to_dict()) + "\n")
    return result
