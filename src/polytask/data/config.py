"""The ``[data]`` section (with ``[data.split]``, ``[data.input]`` and ``[[data.sources]]``)
and ``[sampling]``: where the tables are, what role each column plays, how rows are split and
how batches are drawn from several sources; and the checks that span those keys."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

from pydantic import Field

from polytask.config_errors import MAX_VOCAB, Rows, Schema, Seed, VocabSize
from polytask.data.arrays import resolve_path
from polytask.data.datasets import DATASETS
from polytask.data.inputs import INPUTS
from polytask.data.inputs.base import build_input
from polytask.data.inputs.multi import INPUT_NAME
from polytask.data.sampling import SamplingConfig
from polytask.errors import ConfigError
from polytask.registry import ComponentConfig
from polytask.tasks import Task
from polytask.tasks.template import TaskTemplate


class SplitConfig(Schema):
    """How rows are split into train / validation / test."""

    method: Literal["random", "group", "files", "column"] = Field(
        default="random",
        description="random rows; group: whole data.group groups; files: val_path / test_path "
        "tables; column: split.column holds each row's split: train, val or test (any case)",
    )
    val: float = Field(
        default=0.15,
        ge=0.0,
        lt=1.0,
        description="fraction of the rows (or of the groups, unit = 'groups') held out for "
        "validation",
    )
    test: float = Field(
        default=0.15,
        ge=0.0,
        lt=1.0,
        description="fraction held out for the test set, scored once at the end",
    )
    seed: Seed | None = Field(
        default=None, description="seed of the split; default: the run's seed"
    )
    val_path: str | None = Field(default=None, description="method 'files': the validation table")
    test_path: str | None = Field(default=None, description="method 'files': the test table")
    column: str | None = Field(
        default=None, description="method 'column': the column holding train / val / test"
    )
    unit: Literal["rows", "groups"] = Field(
        default="rows",
        description="method 'group': val and test are fractions of the rows (rows) or of the "
        "groups (groups: 4 of 42 subjects for val = 0.1)",
    )


class DataConfig(Schema):
    """Where the table is and what role each column plays."""

    path: str | None = Field(
        default=None,
        description="the table (CSV, Parquet, xlsx, a folder of files); relative to the "
        "config file",
    )
    dataset: str | None = Field(
        default=None, description="a registered dataset instead of a path (polytask list: datasets)"
    )
    root: str | None = Field(
        default=None,
        description="folder the dataset's files are read from; default: POLYTASK_DATA or "
        "../shared/data",
    )
    format: Literal["auto", "csv", "parquet", "excel", "folder", "lines", "conllu"] = Field(
        default="auto",
        description="how path is read; auto: from its suffix (a folder: one row per file; "
        ".conllu/.conllu.gz: one row per sentence)",
    )
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
    inputs: dict[str, ComponentConfig] = Field(
        default_factory=dict,
        description="several named inputs per example ([data.inputs.<name>]: a processor "
        "such as image, text or table and its parameters), fused by the 'fusion' encoder; "
        "replaces data.input",
    )
    na_values: list[str] = Field(
        default_factory=list,
        description="extra cell values read as missing, besides the empty cell and NA/NaN",
    )
    features: list[str] | None = Field(
        default=None, description="the feature columns; default: every column not otherwise used"
    )
    ignore: list[str] = Field(default_factory=list, description="columns that are not features")
    group: str | None = Field(
        default=None, description="rows sharing this column's value never straddle splits"
    )
    id: str | None = Field(
        default=None, description="copied into predictions, not used as a feature"
    )
    numeric: list[str] = Field(
        default_factory=list,
        description="columns to treat as numbers even if they look categorical",
    )
    categorical: list[str] = Field(
        default_factory=list, description="columns to treat as categories even if they hold numbers"
    )
    categorical_encoding: Literal["auto", "onehot", "embedding"] = Field(
        default="auto",
        description="auto: one-hot up to onehot_max_categories values, a learned embedding above",
    )
    onehot_max_categories: int = Field(
        default=10,
        ge=1,
        le=MAX_VOCAB,
        description="auto encoding: most categories a column may have and still be one-hot",
    )
    max_categories: VocabSize = Field(
        default=1000,
        description="categories kept per column (the most frequent); the rest share the "
        "unseen slot",
    )
    min_frequency: int = Field(
        default=1, ge=1, description="training rows a category needs to get its own slot"
    )
    unseen: Literal["unknown", "error"] = Field(
        default="unknown",
        description="a category never seen in training at prediction: the unknown slot, or "
        "an error",
    )
    missing_numeric: Literal["median", "mean", "zero"] = Field(
        default="median", description="value a missing number is imputed with (training statistic)"
    )
    missing_indicator: bool = Field(
        default=True,
        description="add a 0/1 column per numeric feature with missing values, so the model "
        "sees the gap",
    )
    numeric_bins: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="quantile bins fitted per numeric column on the training rows, for the "
        "encoders' numeric embeddings (model.encoder.numeric_embedding; 48 is the paper's "
        "default); 0: none",
    )
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
    task_column: str | None = Field(
        default=None,
        description="task-indexed table: the column naming each row's task; each [[tasks]] "
        "template becomes one task per distinct value",
    )
    task_values: list[str | int] | None = Field(
        default=None,
        min_length=1,
        description="task_column: the values to make tasks of (default: every value); rows "
        "of other values are dropped",
    )
    exclude_task_values: list[str | int] = Field(
        default_factory=list,
        description="task_column: values whose rows are dropped (no task made for them)",
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
    workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="processes decoding file-backed inputs (images, audio) batch by batch; "
        "0 decodes every file once, before training, in this process",
    )
    prefetch: int = Field(
        default=2, ge=1, le=64, description="workers: batches each worker prepares ahead"
    )
    stream: bool = Field(
        default=False,
        description="stream a Parquet data.path in chunks instead of loading it (tables "
        "larger than memory)",
    )
    stream_chunk: Rows = Field(default=65536, description="stream: rows read at a time")
    stream_buffer: Rows = Field(
        default=262144, description="stream: rows shuffled together before batching"
    )
    stream_sample: Rows = Field(
        default=100000, ge=100, description="stream: training rows sampled for medians/tasks"
    )

    def input_component(self) -> ComponentConfig | None:
        """The run's input processor: ``data.input``, or the ``multi`` processor holding
        ``data.inputs`` (:mod:`polytask.data.inputs.multi`); None for table features."""
        if self.inputs:
            inputs = {k: v.model_dump() for k, v in self.inputs.items()}
            return ComponentConfig.model_validate({"name": "multi", "inputs": inputs})
        return self.input


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


class SourceConfig(Schema):
    """One ``[[data.sources]]`` entry: a table and the tasks it labels."""

    name: str = Field(min_length=1, description="the source's name (in logs and sampling weights)")
    tasks: list[str] = Field(
        min_length=1,
        description="tasks whose labels this source holds; the others are missing on its rows",
    )
    path: str | None = Field(
        default=None, description="this source's table; relative to the config file"
    )
    dataset: str | None = Field(default=None, description="a registered dataset instead of a path")
    root: str | None = Field(default=None, description="folder the dataset's files are read from")
    format: Literal["auto", "csv", "parquet", "excel", "folder", "lines", "conllu"] | None = Field(
        default=None, description="as data.format; default: data.format"
    )
    na_values: list[str] | None = Field(
        default=None, description="as data.na_values; default: data.na_values"
    )
    pattern: str | None = Field(
        default=None, description="folder: glob of the files to read; default: data.pattern"
    )
    regex: str | None = Field(
        default=None, description="folder: named groups read from each relative file path"
    )
    path_column: str | None = Field(default=None, description="folder: column of the file paths")
    columns: list[str] | None = Field(default=None, description="lines: fields of a line")
    separator: str | None = Field(default=None, description="lines: field separator")
    encoding: str | None = Field(default=None, description="lines: text encoding")
    files_root: str | None = Field(
        default=None, description="folder relative file paths in the table resolve against"
    )
    split: SplitConfig | None = None
    where: dict[str, str | list[str]] | None = Field(
        default=None,
        description="keep only the rows where these columns hold these values (column = "
        "value or [values])",
    )


DataConfig.model_rebuild()


def source_data(data: DataConfig, source: SourceConfig) -> DataConfig:
    """``[data]`` as seen by one source: the run's keys with the source's own ones."""
    own = {k: getattr(source, k) for k in SOURCE_KEYS if getattr(source, k) is not None}
    if "path" in own or "dataset" in own:
        own.setdefault("path", None)
        own.setdefault("dataset", None)
    return data.model_copy(update={**own, "sources": []})


def check_data(data: DataConfig, sampling: SamplingConfig, tasks: list[Task]) -> None:
    """The checks no single key's schema can make: split methods and the keys they need, the
    input processor's name and parameters, streaming, sources and the sampler."""
    _check_sources(data, sampling, tasks)
    _check_task_column(data)
    if data.split.method == "group" and data.group is None and _dataset_group(data) is None:
        raise ConfigError("config error: data.group: split method 'group' needs a group column")
    if data.split.method == "files" and data.split.val_path is None:
        raise ConfigError("config error: data.split.val_path: split method 'files' needs it")
    if data.split.method == "column" and data.split.column is None:
        raise ConfigError("config error: data.split.column: split method 'column' needs it")
    if data.split.unit == "groups" and data.split.method != "group":
        raise ConfigError(
            "config error: data.split.unit: 'groups' applies to split method 'group' "
            f"(method is {data.split.method!r})"
        )
    if data.input is not None:
        INPUTS.check_section(data.input, "data.input")
    if data.inputs:
        _check_inputs(data)
    if data.workers and not _reads_files(data):
        raise ConfigError(
            "config error: data.workers: worker processes decode file-backed inputs "
            "(data.input 'image' or 'audio'); tables are indexed in memory, set it to 0"
        )
    if data.workers and data.sources:
        raise ConfigError(
            "config error: data.workers: worker loading reads one table, not data.sources; "
            "set it to 0"
        )
    if data.split.method not in ("files", "column") and data.split.val <= 0:
        raise ConfigError("config error: data.split.val: must be > 0 (validation drives training)")


def _check_inputs(data: DataConfig) -> None:
    """``[data.inputs]``: alone (not with data.input), each input a known processor with valid
    parameters, named so that its tensors can be keyed by its name."""
    if data.input is not None:
        raise ConfigError(
            "config error: data.inputs: declares several inputs, data.input one; keep one of them"
        )
    for key in ("workers", "sources"):
        if getattr(data, key):
            raise ConfigError(
                f"config error: data.{key}: not supported with data.inputs yet (every input "
                "is read from one table and decoded once, before training); remove it"
            )
    for name, section in data.inputs.items():
        if section.name == "multi" or not INPUT_NAME.match(name):
            problem = (
                "an input cannot itself hold several inputs"
                if section.name == "multi"
                else "an input's name has letters, digits and '_' only, not starting with a digit"
            )
            raise ConfigError(f"config error: data.inputs.{name}: {problem}")
        INPUTS.check_section(section, f"data.inputs.{name}")


def _reads_files(data: DataConfig) -> bool:
    """Whether the run's input processor decodes files (what worker processes are for)."""
    section = data.input_component()
    if section is None:
        return False
    return build_input(section.name, section.params()).reads_files


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
    if data.input is not None or data.inputs:
        raise ConfigError(f"{where}: streaming reads table features; remove data.input(s)")
    if data.train_fraction < 1.0:
        raise ConfigError(
            "config error: data.train_fraction: a streamed table keeps every training row; "
            "remove data.train_fraction or data.stream"
        )


def _check_sources(data: DataConfig, sampling: SamplingConfig, tasks: list[Task]) -> None:
    _check_stream(data)
    if not data.sources:
        if sampling.strategy == "round_robin" and sampling.batches == "mixed":
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
    if sampling.strategy == "round_robin" and sampling.batches == "mixed":
        raise ConfigError(
            "config error: sampling.batches: round_robin draws whole batches; use homogeneous"
        )
    if sampling.epoch == "steps" and sampling.steps is None:
        raise ConfigError("config error: sampling.steps: epoch = 'steps' needs it")


def _check_task_column(data: DataConfig) -> None:
    """``task_column`` and the keys that only it uses (task-indexed tables)."""
    column = data.task_column
    if column is None:
        for key in ("task_values", "exclude_task_values"):
            if getattr(data, key):
                raise ConfigError(
                    f"config error: data.{key}: chooses values of data.task_column, which is "
                    "not set"
                )
        return
    where = "config error: data.task_column"
    if data.sources:
        raise ConfigError(f"{where}: a task-indexed table is one table; remove data.sources")
    if data.stream:
        raise ConfigError(f"{where}: a task-indexed table is read in memory; remove data.stream")
    if column in (data.group, data.id, data.split.column):
        raise ConfigError(
            f"{where}: '{column}' is also the group, id or split column; whole tasks would "
            "leave the training rows"
        )
    if data.features is not None and column in data.features:
        raise ConfigError(f"{where}: '{column}' names the task, it cannot also be a feature")
    if data.task_values is not None:
        wanted = {str(v) for v in data.task_values}
        both = sorted(wanted & {str(v) for v in data.exclude_task_values})
        if both:
            raise ConfigError(
                f"config error: data.exclude_task_values: {both[0]!r} is also in data.task_values"
            )


def _dataset_group(data: DataConfig) -> str | None:
    """The group column a registered dataset declares (used when data.group is not set)."""
    if data.dataset is None:
        return None
    info = DATASETS.get(data.dataset)
    return info.group if info is not None else None


class DataRequest(Protocol):
    """What the data layer reads of a run's configuration (a :class:`polytask.RunConfig` is
    one): the ``[data]`` section, the tasks, the seed and the folder paths are relative to."""

    data: DataConfig
    seed: int
    base_dir: str

    def task_objects(self) -> list[Task]: ...

    def task_templates(self) -> Mapping[str, TaskTemplate]: ...


@dataclass(frozen=True)
class DataJob:
    """A :class:`DataRequest` taken apart: the data to prepare, for which tasks, under which
    seed, with relative paths resolved against ``base_dir``. ``templates``: the tasks that
    are templates (by name), expanded when the table is read (:mod:`polytask.tasks.template`)."""

    data: DataConfig
    seed: int
    base_dir: str
    tasks: list[Task] = field(default_factory=list)
    templates: Mapping[str, TaskTemplate] = field(default_factory=dict)

    @classmethod
    def of(cls, request: DataRequest) -> DataJob:
        if isinstance(request, DataJob):
            return request
        return cls(
            request.data,
            request.seed,
            request.base_dir,
            request.task_objects(),
            request.task_templates(),
        )

    def task_templates(self) -> Mapping[str, TaskTemplate]:
        return dict(self.templates)

    def task_objects(self) -> list[Task]:
        return list(self.tasks)

    def resolve(self, path: str) -> Path:
        return resolve_path(path, Path(self.base_dir))

    def for_source(self, source: SourceConfig) -> DataJob:
        """The job as seen by one source: ``[data]`` with the source's own keys."""
        return replace(self, data=source_data(self.data, source))
