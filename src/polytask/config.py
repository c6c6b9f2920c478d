"""The run configuration: a TOML file (or keyword arguments) validated by pydantic.

Every section forbids unknown keys, so a typo fails with the key's path and the valid keys.
Component sections (``[model.encoder]``, ``[model.architecture]``, ``[balancer]``) name a
registered component; their other keys are checked against that component's own schema.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from polytask.config_errors import validation_message
from polytask.data.sampling import SamplingConfig
from polytask.errors import ConfigError
from polytask.evaluate.grouping import SearchMethod
from polytask.models.heads import HeadParams
from polytask.registry import Registry
from polytask.tasks import Task, TaskKind, check_unique_names
from polytask.train.task_schedule import ScheduleConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentConfig(BaseModel):
    """A registered component by name plus its own parameters."""

    model_config = ConfigDict(extra="allow")
    name: str

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TaskConfig(_Strict):
    """One ``[[tasks]]`` entry; the fields of :class:`polytask.Task`."""

    name: str = Field(min_length=1)
    kind: TaskKind
    target: str | list[str]
    classes: list[str] | None = None
    positive: str | None = None
    loss: str | None = None
    metrics: list[str] | None = None
    primary_metric: str | None = None
    weight: float = Field(default=1.0, ge=0.0)
    pos_weight: float | list[float] | None = None
    class_weights: list[float] | None = None
    ignore_index: int | None = None

    def to_task(self) -> Task:
        return Task(**self.model_dump())


class SplitConfig(_Strict):
    """How rows are split into train / validation / test."""

    method: Literal["random", "group", "files", "column"] = "random"
    val: float = Field(default=0.15, ge=0.0, lt=1.0)
    test: float = Field(default=0.15, ge=0.0, lt=1.0)
    seed: int | None = None
    val_path: str | None = None
    test_path: str | None = None
    column: str | None = Field(
        default=None, description="method 'column': the column holding train / val / test"
    )


class DataConfig(_Strict):
    """Where the table is and what role each column plays."""

    path: str | None = None
    dataset: str | None = None
    root: str | None = None
    format: Literal["auto", "csv", "parquet", "folder", "lines"] = "auto"
    pattern: str = Field(default="**/*", description="folder: glob of the files to read")
    regex: str | None = Field(
        default=None, description="folder: named groups read from each relative file path"
    )
    path_column: str = Field(default="path", description="folder: column of the file paths")
    columns: list[str] = Field(default_factory=list, description="lines: fields of a line")
    separator: str = Field(default="\t", min_length=1, description="lines: field separator")
    encoding: str = Field(default="utf-8", description="lines: text encoding")
    files_root: str | None = Field(
        default=None,
        description="folder that relative file paths in the table are resolved against; "
        "default: the folder of data.path",
    )
    input: ComponentConfig | None = Field(
        default=None,
        description="a non-tabular input processor (image, audio, text, ...) and its "
        "parameters; default: the table's columns are the features",
    )
    na_values: list[str] = Field(default_factory=list)
    features: list[str] | None = None
    ignore: list[str] = Field(default_factory=list)
    group: str | None = None
    id: str | None = None
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    categorical_encoding: Literal["auto", "onehot", "embedding"] = "auto"
    onehot_max_categories: int = Field(default=10, ge=1)
    max_categories: int = Field(default=1000, ge=1)
    min_frequency: int = Field(default=1, ge=1)
    unseen: Literal["unknown", "error"] = "unknown"
    missing_numeric: Literal["median", "mean", "zero"] = "median"
    missing_indicator: bool = True
    scale_binary: bool = Field(
        default=True,
        description="standardise numeric columns whose training values are all 0 or 1; "
        "false keeps them as 0/1 (fingerprint bits, flags)",
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    where: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="keep only rows whose column holds this value (or one of these values)",
    )
    sources: list[SourceConfig] = Field(
        default_factory=list,
        description="one table per task (or group of tasks); replaces data.path/dataset",
    )
    train_fraction: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="keep this fraction of the training rows (a random subset drawn with the "
        "run seed; validation and test rows are all kept)",
    )
    stream: bool = Field(
        default=False,
        description="stream a Parquet data.path in chunks instead of loading it (tables "
        "larger than memory)",
    )
    stream_chunk: int = Field(default=65536, ge=1, description="stream: rows read at a time")
    stream_buffer: int = Field(
        default=262144, ge=1, description="stream: rows shuffled together before batching"
    )
    stream_sample: int = Field(
        default=100000, ge=100, description="stream: training rows sampled for medians/tasks"
    )


#: The [data] keys a source may set for itself; the others (features, input, preprocessing)
#: are the run's and shared by every source, since one encoder reads them all.
SOURCE_KEYS = (
    "path",
    "dataset",
    "root",
    "format",
    "na_values",
    "pattern",
    "regex",
    "path_column",
    "columns",
    "separator",
    "encoding",
    "files_root",
    "split",
    "where",
)


class SourceConfig(_Strict):
    """One ``[[data.sources]]`` entry: a table and the tasks it labels."""

    name: str = Field(min_length=1)
    tasks: list[str] = Field(min_length=1)
    path: str | None = None
    dataset: str | None = None
    root: str | None = None
    format: Literal["auto", "csv", "parquet", "folder", "lines"] | None = None
    na_values: list[str] | None = None
    pattern: str | None = None
    regex: str | None = None
    path_column: str | None = None
    columns: list[str] | None = None
    separator: str | None = None
    encoding: str | None = None
    files_root: str | None = None
    split: SplitConfig | None = None
    where: dict[str, str | list[str]] | None = None


DataConfig.model_rebuild()


def _with_default_name(value: Any, default: str) -> Any:
    """A component section without ``name`` (e.g. from ``--set model.encoder.widths=[8]``)
    configures the default component."""
    if isinstance(value, dict) and "name" not in value:
        return {"name": default, **value}
    return value


class ModelConfig(_Strict):
    encoder: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="mlp"))
    architecture: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="hard"))
    head: HeadParams = Field(default_factory=HeadParams)
    preference_conditioning: Literal["none", "input", "film"] = Field(
        default="none",
        description="a model that takes a preference over the tasks (balancer 'cosmos'; "
        "predict --preference): input = appended to the input features (COSMOS), film = FiLM "
        "of the shared representation (polytask.models.conditioning)",
    )

    @field_validator("encoder", "architecture", mode="before")
    @classmethod
    def _default_component(cls, value: Any, info: ValidationInfo) -> Any:
        return _with_default_name(value, "mlp" if info.field_name == "encoder" else "hard")


class TrainConfig(_Strict):
    """Optimisation budget and bookkeeping."""

    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=256, ge=1)
    eval_batch_size: int = Field(default=8192, ge=1)
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    scheduler: Literal["none", "cosine", "linear"] = "cosine"
    warmup: float = Field(default=0.0, ge=0.0, lt=1.0, description="fraction of steps")
    grad_clip: float | None = Field(default=1.0, gt=0.0)
    patience: int | None = Field(default=5, ge=1)
    min_delta: float = Field(default=0.0, ge=0.0)
    criterion: str = "mean_relative"
    log_format: Literal["jsonl", "csv"] = "jsonl"
    progress: bool = True
    threads: int | None = Field(default=None, ge=1)
    checkpoint_every: int | None = Field(
        default=None,
        ge=1,
        description="also checkpoint every N steps, so a resume continues mid-epoch",
    )
    tensorboard: bool = Field(
        default=False,
        description="also write the per-epoch log as TensorBoard scalars to "
        "<run dir>/tensorboard/ (needs the tensorboard extra and a run directory)",
    )


#: The name of the single-task baselines in a comparison; no configuration may take it.
SINGLE_TASK = "single-task"


def _fixed_by_compare(key: str) -> bool:
    """Keys a comparison sets for every run (seeds, split, training fraction): a configuration
    or the grid changing them would change what is compared, not how a model is trained."""
    fixed = ("seed", "out", "baselines", "compare", "data.split", "data.train_fraction")
    key = key.strip()
    return any(key == f or key.startswith(f + ".") for f in fixed)


class CompareConfiguration(_Strict):
    """One ``[[compare.configurations]]`` entry: a multi-task set-up, written as ``--set``
    overrides of the run configuration."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$",
        description="label in tables and the run directory name (letters, digits, _ . + = -)",
    )
    set: list[str] = Field(
        default_factory=list,
        description="key=value overrides, as on the command line: model.architecture.name=mmoe",
    )


class _SeededConfig(_Strict):
    """A section that repeats its runs over seeds (``[compare]``, ``[pareto]``)."""

    seeds: int | list[int] = Field(
        default=5,
        description="a number of seeds (counting up from the config's seed) or the seeds",
    )

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("give at least 1 seed")
        elif not value or len(set(value)) != len(value):
            raise ValueError("give a non-empty list of distinct seeds")
        return value

    def seed_list(self, first: int) -> list[int]:
        """The seeds: the list given, or ``first, first + 1, ...``."""
        if isinstance(self.seeds, int):
            return list(range(first, first + self.seeds))
        return list(self.seeds)


class CompareConfig(_SeededConfig):
    """``[compare]``: what ``polytask compare`` trains (the other sections are the set-up every
    run starts from)."""

    configurations: list[CompareConfiguration] = Field(
        default_factory=list,
        description="multi-task set-ups to compare; default: one, the config as written",
    )
    fractions: list[float] = Field(
        default_factory=lambda: [1.0],
        min_length=1,
        description="fractions of the training rows to compare at (data efficiency)",
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="key -> values tried for every model alike (train.lr = [1e-3, 3e-3]); the "
        "best point is chosen on validation for each configuration and seed",
    )
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0, description="level of the verdict test")
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0, description="interval coverage")

    @field_validator("configurations")
    @classmethod
    def _check_configurations(cls, value: list[CompareConfiguration]) -> list[CompareConfiguration]:
        names = [c.name for c in value]
        if SINGLE_TASK in names:
            raise ValueError(f"{SINGLE_TASK!r} names the baselines; pick another name")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"configuration name {twice[0]!r} is used twice")
        for conf in value:
            for text in conf.set:
                if _fixed_by_compare(text.partition("=")[0]):
                    raise ValueError(
                        f"configuration {conf.name!r}: {text!r} sets a key the comparison fixes"
                    )
        return value

    @field_validator("fractions")
    @classmethod
    def _check_fractions(cls, value: list[float]) -> list[float]:
        bad = [f for f in value if not 0.0 < f <= 1.0]
        if bad:
            raise ValueError(f"fractions must be in (0, 1], got {bad[0]}")
        if len(set(value)) != len(value):
            raise ValueError("fractions must be distinct")
        return value

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
            if _fixed_by_compare(key):
                raise ValueError(f"grid key {key!r} is set by the comparison; it cannot be tuned")
        return value


class ParetoConfig(_SeededConfig):
    """``[pareto]``: what ``polytask pareto`` trains to map the trade-off between the tasks
    (:mod:`polytask.pareto`): one run per preference vector (and seed), plus, when the balancer
    is ``cosmos``, one preference-conditioned run evaluated at the same preferences."""

    seeds: int | list[int] = Field(
        default=1,
        description="a number of seeds (counting up from the config's seed) or the seeds",
    )
    n_points: int = Field(
        default=11,
        ge=2,
        description="preference vectors: a grid on the simplex for 2-3 tasks (at most this "
        "many points), quasi-random (Halton) points for more",
    )
    method: Literal["static", "epo"] = Field(
        default="static",
        description="static: weights = preference (weighted sum); epo: exact Pareto optimal "
        "search on the preference ray (Mahapatra & Rajan 2020)",
    )
    min_weight: float = Field(
        default=0.05,
        ge=0.0,
        lt=0.5,
        description="smallest weight of any task in a preference (a weight of 0 leaves a "
        "task's head untrained); the grid is shrunk onto [min_weight, 1]",
    )
    balancers: list[str] = Field(
        default_factory=list,
        description="balancing methods also trained once per seed, each giving one point",
    )
    conditioned_epochs: int | None = Field(
        default=None,
        ge=1,
        description="train.epochs of the conditioned (cosmos) run; default: train.epochs. One "
        "model for every preference may need a longer budget than one run for one preference",
    )
    budget_control: bool = Field(
        default=True,
        description="when conditioned_epochs differs from train.epochs: also train equal "
        "weights for conditioned_epochs (one point per seed), so a conditioned model that beats "
        "the sweep only because it trained longer shows it",
    )
    reference: dict[str, float] | None = Field(
        default=None,
        description="hypervolume reference point in metric units, per task; default: the "
        "worst value over every evaluated point, moved out by `margin` of the range",
    )
    margin: float = Field(
        default=0.1, ge=0.0, description="default reference: nadir + margin * (nadir - ideal)"
    )
    workers: int = Field(default=1, ge=1, description="runs trained in parallel processes")


class AffinityConfig(_Strict):
    """``[affinity]``: how ``polytask affinity`` measures lookahead task affinity and suggests a
    grouping (:mod:`polytask.evaluate.affinity`). The command's options override these keys;
    an unset key takes the default of :func:`polytask.evaluate.affinity.affinity`."""

    every: int | None = Field(
        default=None,
        ge=1,
        description="measure every N training steps; default: 1 in a probe, else 5",
    )
    lr: float | None = Field(
        default=None,
        gt=0.0,
        description="lookahead step size; default: the optimiser's learning rate at that step",
    )
    max_groups: int | None = Field(
        default=None, ge=1, description="budget of groups (models); default min(tasks, 3)"
    )
    probe_epochs: int | None = Field(
        default=None, ge=1, description="training epochs of a probe (--probe); default 1"
    )
    search: SearchMethod = Field(
        default="auto", description="grouping search; auto: exhaustive, exact DP, beam by size"
    )
    alone_score: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="score of a task served by a group of one (0.0 = no transfer); default: "
        "not allowed, every task shares a model (the paper's rule)",
    )


class DistillConfig(_Strict):
    """``[distill]``: train the run's model (the student) on teachers' outputs as well as the
    labels (:mod:`polytask.distill`; ``polytask distill``). Without teachers, no distillation."""

    teachers: list[str] = Field(
        default_factory=list,
        description="teacher model (or run) directories: one multi-task model, or one per task",
    )
    temperature: float = Field(
        default=2.0, gt=0.0, description="softening of classification outputs (Hinton et al.)"
    )
    anneal: bool = Field(
        default=True,
        description="teacher annealing (Clark et al., BAM!): the labels' weight rises linearly "
        "from 0 (teacher only) to 1 (labels only) over training; false: label_weight throughout",
    )
    label_weight: float = Field(
        default=0.5, ge=0.0, le=1.0, description="the labels' share of the loss when not annealing"
    )
    fill_missing: bool = Field(
        default=True,
        description="rows without a task's label learn that task from the teacher alone; "
        "false: only labelled rows count",
    )
    cache_dir: str | None = Field(
        default=None,
        description="keep the teachers' outputs here (keyed by teacher weights and data) so "
        "later students skip the teachers' forward passes; default: no cache",
    )


class FinetuneConfig(_Strict):
    """``[finetune]``: how ``polytask finetune BASE CONFIG`` continues from a trained model (and
    how a run freezes a pretrained encoder): what is frozen, learning rates per group, gradual
    unfreezing (:mod:`polytask.finetune`)."""

    freeze: Literal["encoder", "layers", "none"] = Field(
        default="encoder",
        description="encoder: every shared parameter; layers: the first `layers` shared layers; "
        "none: everything trains",
    )
    layers: int = Field(default=0, ge=0, description="with freeze = 'layers': how many")
    shared_lr_scale: float = Field(
        default=1.0, gt=0.0, description="learning rate of the shared parameters, x train.lr"
    )
    head_lr_scale: float = Field(
        default=1.0, gt=0.0, description="learning rate of the task-specific parts, x train.lr"
    )
    layer_lr_decay: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="discriminative fine-tuning (Howard & Ruder, ULMFiT, 2018): the top shared "
        "layer learns at shared_lr_scale, each layer below at layer_lr_decay x the one above "
        "(ULMFiT: 1/2.6 = 0.38); 1: one rate for the whole encoder",
    )
    unfreeze: Literal["none", "gradual"] = Field(
        default="none",
        description="gradual: unfreeze one frozen layer every `unfreeze_every` epochs, from the "
        "top down (Howard & Ruder, ULMFiT, 2018)",
    )
    unfreeze_every: int = Field(default=1, ge=1)
    keep_tasks: bool = Field(
        default=True,
        description="keep the base model's tasks that this run does not train (heads frozen)",
    )
    reference_data: str | None = Field(
        default=None,
        description="a table labelled for the base model's tasks, on which they are re-measured "
        "before and after fine-tuning (default: the run's own test split, if it has the labels)",
    )


class RunConfig(_Strict):
    """A whole run: data, tasks, model, balancer and training budget."""

    seed: int = 0
    out: str | None = None
    baselines: bool = True
    data: DataConfig
    tasks: list[TaskConfig] = Field(min_length=1)
    model: ModelConfig = Field(default_factory=ModelConfig)
    balancer: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="static"))
    train: TrainConfig = Field(default_factory=TrainConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)
    affinity: AffinityConfig = Field(default_factory=AffinityConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    pareto: ParetoConfig = Field(default_factory=ParetoConfig)
    #: Directory that relative paths are resolved against (the config file's folder).
    base_dir: str = "."

    @field_validator("balancer", mode="before")
    @classmethod
    def _default_balancer(cls, value: Any) -> Any:
        return _with_default_name(value, "static")

    def task_objects(self) -> list[Task]:
        return [t.to_task() for t in self.tasks]

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


# -- building and checking ---------------------------------------------------------------
def _component_registries() -> list[tuple[str, Registry[Any], str]]:
    from polytask.balance.base import BALANCERS
    from polytask.models.architectures import ARCHITECTURES
    from polytask.models.encoders import ENCODERS

    return [
        ("model.encoder", ENCODERS, "encoder"),
        ("model.architecture", ARCHITECTURES, "architecture"),
        ("balancer", BALANCERS, "balancer"),
    ]


def _component(cfg: RunConfig, path: str) -> ComponentConfig:
    obj: Any = cfg
    for part in path.split("."):
        obj = getattr(obj, part)
    assert isinstance(obj, ComponentConfig)
    return obj


def check_config(cfg: RunConfig) -> RunConfig:
    """Checks that span sections: component names/params, tasks, criterion, data source."""
    for path, registry, _ in _component_registries():
        comp = _component(cfg, path)
        if comp.name not in registry:
            raise ConfigError(
                f"config error: {path}.name: unknown {registry.kind} {comp.name!r}; "
                f"valid choices: {', '.join(registry.names())}"
            )
        registry.validate_params(comp.name, comp.params(), path)
    tasks = cfg.task_objects()
    check_unique_names(tasks)
    _check_criterion(cfg.train.criterion, tasks)
    # Building the balancer checks what its schema cannot, e.g. weights naming unknown tasks.
    from polytask.balance.base import build_balancer

    build_balancer(cfg.balancer.name, cfg.balancer.params(), tasks)
    _check_sources(cfg, tasks)
    data = cfg.data
    if data.split.method == "group" and data.group is None and _dataset_group(data) is None:
        raise ConfigError("config error: data.group: split method 'group' needs a group column")
    if data.split.method == "files" and data.split.val_path is None:
        raise ConfigError("config error: data.split.val_path: split method 'files' needs it")
    if data.split.method == "column" and data.split.column is None:
        raise ConfigError("config error: data.split.column: split method 'column' needs it")
    if data.input is not None:
        from polytask.data.inputs import INPUTS

        if data.input.name not in INPUTS:
            raise ConfigError(
                f"config error: data.input.name: unknown input {data.input.name!r}; "
                f"valid choices: {', '.join(INPUTS.names())}"
            )
        INPUTS.validate_params(data.input.name, data.input.params(), "data.input")
    if data.split.method not in ("files", "column") and data.split.val <= 0:
        raise ConfigError("config error: data.split.val: must be > 0 (validation drives training)")
    return cfg


def source_config(cfg: RunConfig, source: SourceConfig) -> RunConfig:
    """The run configuration as seen by one source: ``[data]`` with the source's own keys."""
    own = {k: getattr(source, k) for k in SOURCE_KEYS if getattr(source, k) is not None}
    if "path" in own or "dataset" in own:
        own.setdefault("path", None)
        own.setdefault("dataset", None)
    data = cfg.data.model_copy(update={**own, "sources": []})
    return cfg.model_copy(update={"data": data})


def _check_stream(data: DataConfig) -> None:
    if not data.stream:
        return
    where = "config error: data.stream"
    if data.path is None or data.sources:
        raise ConfigError(f"{where}: streaming reads one Parquet file given as data.path")
    if data.format not in ("auto", "parquet"):
        raise ConfigError(f"{where}: streaming reads Parquet files (data.format = 'parquet')")
    if data.split.method != "random":
        raise ConfigError(f"{where}: a streamed table is split at random (data.split.method)")
    if data.input is not None:
        raise ConfigError(f"{where}: streaming reads table features; remove data.input")
    if data.train_fraction < 1.0:
        raise ConfigError(
            "config error: data.train_fraction: a streamed table keeps every training row; "
            "remove data.train_fraction or data.stream"
        )


def _check_sources(cfg: RunConfig, tasks: list[Task]) -> None:
    data = cfg.data
    _check_stream(data)
    if not data.sources:
        if cfg.sampling.strategy == "round_robin" and cfg.sampling.batches == "mixed":
            raise ConfigError(
                "config error: sampling.batches: round_robin draws whole batches; use homogeneous"
            )
        return
    if data.path is not None or data.dataset is not None:
        raise ConfigError(
            "config error: data.sources: give the tables in the sources, not data.path/dataset"
        )
    names = {t.name for t in tasks}
    seen: set[str] = set()
    for i, src in enumerate(data.sources):
        where = f"config error: data.sources.{i}"
        if src.name in seen:
            raise ConfigError(f"{where}.name: source name {src.name!r} is used twice")
        seen.add(src.name)
        if src.path is not None and src.dataset is not None:
            raise ConfigError(f"{where}: give exactly one of path or dataset")
        unknown = [t for t in src.tasks if t not in names]
        if unknown:
            raise ConfigError(
                f"{where}.tasks: unknown task {unknown[0]!r}; declared tasks: "
                f"{', '.join(sorted(names))}"
            )
        split = src.split or data.split
        if split.method == "column" and split.column is None:
            raise ConfigError(f"{where}.split.column: split method 'column' needs it")
    labelled = {t for src in data.sources for t in src.tasks}
    orphans = [t.name for t in tasks if t.name not in labelled]
    if orphans:
        raise ConfigError(
            f"config error: data.sources: no source labels task {orphans[0]!r}; list it in "
            "the tasks of the source that holds its labels"
        )
    if cfg.sampling.strategy == "round_robin" and cfg.sampling.batches == "mixed":
        raise ConfigError(
            "config error: sampling.batches: round_robin draws whole batches; use homogeneous"
        )
    if cfg.sampling.epoch == "steps" and cfg.sampling.steps is None:
        raise ConfigError("config error: sampling.steps: epoch = 'steps' needs it")


def _dataset_group(data: DataConfig) -> str | None:
    """The group column a registered dataset declares (used when data.group is not set)."""
    if data.dataset is None:
        return None
    from polytask.data.datasets import DATASETS

    info = DATASETS.get(data.dataset)
    return info.group if info is not None else None


def _check_criterion(criterion: str, tasks: list[Task]) -> None:
    if criterion in ("mean_relative", "val_loss"):
        return
    task_name, _, metric = criterion.partition(".")
    by_name = {t.name: t for t in tasks}
    if task_name in by_name and metric in by_name[task_name].metric_names:
        return
    choices = ["mean_relative", "val_loss"] + [
        f"{t.name}.{m}" for t in tasks for m in t.metric_names
    ]
    raise ConfigError(
        f"config error: train.criterion: {criterion!r} is not valid; "
        f"valid choices: {', '.join(choices)}"
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """``key.path=value`` with the value read as TOML (``5``, ``[64, 32]``, ``true``) or,
    failing that, as a plain string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.epochs=5")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip().split("."), value


def apply_override(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``value`` at ``keys`` in the raw config; list items by index or by task name."""
    node: Any = raw
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            index = _list_index(node, key, ".".join(keys[: i + 1]))
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if last:
            node[key] = value
        else:
            node = node.setdefault(key, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"--set {'.'.join(keys)}: '{key}' is not a section")


def _list_index(items: list[Any], key: str, where: str) -> int:
    if key.isdigit() and int(key) < len(items):
        return int(key)
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == key:
            return i
    raise ConfigError(f"--set {where}: no list item with index or name {key!r}")


def config_from_dict(
    raw: dict[str, Any], overrides: list[str] | None = None, base_dir: str | Path = "."
) -> RunConfig:
    """Validate a raw dict (as read from TOML), after applying ``key=value`` overrides."""
    raw = _deep_copy(raw)
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(raw, keys, value)
    raw.setdefault("base_dir", str(base_dir))
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, "", RunConfig)) from None
    return check_config(cfg)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read and validate a TOML config file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' not found")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{p}': not valid TOML: {exc}") from None
    if "base_dir" in raw:
        raise ConfigError(f"config file '{p}': base_dir is set by polytask, not by the file")
    return config_from_dict(raw, overrides, base_dir=p.parent.resolve())


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
