"""Command line: ``polytask train | distill | finetune | evaluate | predict | serve | demo | list |
fetch | config | init`` (and the studies' commands).

Each command parses its arguments and calls the Python API; it adds no logic of its own. A
:class:`~polytask.errors.PolytaskError` is printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

import polytask
from polytask import catalog
from polytask.catalog import BUILT_IN, Catalog, Row, cached_document
from polytask.console import make_console
from polytask.errors import PolytaskError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from polytask.registry import Registry
    from polytask.run.pipeline import RunResult

# Module level imports only what every call needs: ``polytask --help`` must not import torch,
# pydantic or the metrics libraries (seconds of CPU); each command imports what it uses.

app = typer.Typer(
    name="polytask",
    help="Multi-task learning: one network, shared layers, one head per task.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts are plain text: "[finetune] section" and "polytask[text]" print as written.
    rich_markup_mode=None,
)
# Plain text (a task named ``x[1]`` or ``polytask[text]`` prints as written) and no hard
# wrapping when redirected: polytask.console.make_console.
out_console = make_console()
err_console = make_console(stderr=True)

PREFERENCE_HELP = (
    "trade-off served by a preference-conditioned model: one weight per task in task order, "
    "e.g. 0.7,0.3 (normalised to sum to 1; default: equal weights)"
)


DEVICE_HELP = "auto (a GPU when present) | cpu | cuda | cuda:N | mps"

#: ``--json``: the command's results as one JSON document on stdout (messages go to stderr).
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="print the results as one JSON document on stdout (NaN as null)"),
]


#: ``--backend`` and its Ray options, shared by compare, pareto and affinity --pair-search.
BackendOption = Annotated[
    str,
    typer.Option(
        "--backend", help="where the runs train: local (this machine) or ray (a Ray cluster)"
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option("--address", help="with --backend ray: the head node's HOST:PORT, or auto"),
]
CpusPerRunOption = Annotated[
    float | None, typer.Option("--cpus-per-run", help="with --backend ray: CPUs per run (1)")
]
GpusPerRunOption = Annotated[
    float | None, typer.Option("--gpus-per-run", help="with --backend ray: GPUs per run (0)")
]


def device_override(device: str | None) -> list[str]:
    """``--device`` as the ``--set train.device=...`` it stands for (checked by the schema)."""
    return [] if device is None else [f"train.device={json.dumps(device)}"]


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="TOML run configuration")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run directory")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: train.epochs=5")
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    baselines: Annotated[
        bool | None, typer.Option(help="also train single-task baselines (default: config)")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help=DEVICE_HELP)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    as_json: JsonOption = False,
) -> None:
    """Train a multi-task model (and single-task baselines) from a config file."""
    from polytask.config import load_config
    from polytask.run.pipeline import run

    overrides = list(set_ or []) + device_override(device)
    if baselines is not None:
        overrides.append(f"baselines={'true' if baselines else 'false'}")
    cfg = load_config(config, overrides)
    target = out or (cfg.resolve(cfg.out) if cfg.out else Path("runs") / config.stem)
    result = run(cfg, out=target, resume=resume, overwrite=overwrite, quiet=quiet)
    if not _rank_zero():  # torchrun: rank 0 reports for the run
        return
    _report_run(result, target, as_json)


@app.command()
def distill(
    config: Annotated[Path, typer.Argument(help="TOML run configuration of the student")],
    teacher: Annotated[
        list[Path] | None,
        typer.Option(
            "--teacher", help="teacher model or run directory (repeat; default: distill.teachers)"
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run directory")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: distill.temperature=4")
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    device: Annotated[str | None, typer.Option("--device", help=DEVICE_HELP)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    as_json: JsonOption = False,
) -> None:
    """Distil teachers (one model per task, or one multi-task model) into the config's model,
    and compare the student with its teachers on the test split."""
    from polytask.config import load_config
    from polytask.run.pipeline import run
    from polytask.studies.distill.config import DistillConfig

    overrides = list(set_ or []) + device_override(device)
    if teacher:
        paths = [str(p.resolve()) for p in teacher]
        overrides.append(f"distill.teachers={json.dumps(paths)}")
    cfg = load_config(config, overrides)
    if not cfg.section("distill", DistillConfig).teachers:
        raise PolytaskError(
            f"config '{config}': distill.teachers is empty; list the teacher model "
            "directories there or pass --teacher DIR"
        )
    target = out or (cfg.resolve(cfg.out) if cfg.out else Path("runs") / config.stem)
    result = run(cfg, out=target, resume=resume, overwrite=overwrite, quiet=quiet)
    if not _rank_zero():
        return
    params = result.predictor.metrics.get("parameters", {})
    lines = (
        [f"parameters: student {params['student']:,}, teachers {params['teachers']:,}"]
        if params
        else []
    )
    _report_run(result, target, as_json, lines)


@app.command()
def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="model or run directory")],
    data: Annotated[
        Path | None,
        typer.Argument(
            help="CSV/Parquet/xlsx table with target columns (with --split: the run's table, "
            "read from its config when omitted)"
        ),
    ] = None,
    task: Annotated[list[str] | None, typer.Option("--task", help="only these tasks")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    preference: Annotated[str | None, typer.Option(help=PREFERENCE_HELP)] = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split", help="train | val | test: score the rows the run put in this split"
        ),
    ] = None,
) -> None:
    """Score a trained model on a labelled table, or on its run's own test (val, train) rows."""
    from polytask.run.predictor import load
    from polytask.run.splits import evaluate_split
    from polytask.state_io import to_json

    if split is not None:
        metrics = evaluate_split(model_dir, split, task, data, preference)
    elif data is None:
        raise PolytaskError(
            "evaluate: give a labelled table, or --split test to score the run's own test rows"
        )
    else:
        predictor = load(model_dir)
        metrics = predictor.evaluate(
            predictor.read(data),
            task,
            source=f"data file '{data}'",
            base_dir=Path(data).parent,
            preference=preference,
        )
    if as_json:
        # NaN (a metric without valid labels) is not JSON: to_json writes null instead.
        out_console.print_json(to_json(metrics))
        return
    table = Table(title=f"{data if split is None else f'{model_dir}: {split} rows'}")
    for col in ("task", "metric", "value"):
        table.add_column(col)
    for name, values in metrics.items():
        for metric, value in values.items():
            table.add_row(name, metric, "nan" if math.isnan(value) else f"{value:.4f}")
    out_console.print(table)


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(help="model or run directory")],
    data: Annotated[Path, typer.Argument(help="CSV/Parquet table of features")],
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV or Parquet to write")],
    task: Annotated[list[str] | None, typer.Option("--task", help="only these tasks")] = None,
    preference: Annotated[str | None, typer.Option(help=PREFERENCE_HELP)] = None,
    chunk_rows: Annotated[
        int, typer.Option(min=1, help="rows read, predicted and written at a time")
    ] = 100_000,
    device: Annotated[str, typer.Option("--device", help=DEVICE_HELP)] = "auto",
    precision: Annotated[
        str, typer.Option("--precision", help="32 | bf16-mixed | 16-mixed (forward pass)")
    ] = "32",
    all_tasks: Annotated[
        bool,
        typer.Option(
            "--all-tasks",
            help="task-indexed model: every task's columns, not each row's own task's",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Predict every task (or a subset) for each row of a table, in chunks (bounded memory);
    the output appears only once every row is predicted. A model of task-indexed data
    (data.task_column) gives each row its own task's prediction in one column set."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from polytask.run.batch import predict_file, table_rows
    from polytask.run.predictor import load

    predictor = load(model_dir, device=device, precision=precision)
    with Progress(
        TextColumn("predicting"),
        BarColumn(),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
        console=err_console,
        disable=not err_console.is_terminal,
        transient=True,
    ) as progress:
        bar = progress.add_task("predict", total=table_rows(data))
        rows = predict_file(
            predictor,
            data,
            output,
            tasks=task,
            preference=preference,
            chunk_rows=chunk_rows,
            on_chunk=lambda n: progress.advance(bar, n),
            per_task=all_tasks,
        )
    err_console.print(f"wrote {rows} rows to {output}", soft_wrap=True)
    if as_json:
        _emit_json(
            {
                "rows": rows,
                "output": str(output),
                "model": str(model_dir),
                "tasks": list(task) if task else [t.name for t in predictor.tasks],
            }
        )


@app.command()
def serve(
    model_dir: Annotated[Path, typer.Argument(help="model or run directory")],
    runtime: Annotated[str, typer.Option(help="torch, or onnx (exported at start-up)")] = "torch",
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="server processes")] = 1,
    max_batch: Annotated[int, typer.Option(min=1, help="rows per forward pass at most")] = 256,
    max_wait_ms: Annotated[
        float, typer.Option(min=0.0, help="how long a batch waits for more requests")
    ] = 2.0,
    max_queue: Annotated[
        int, typer.Option(min=1, help="requests waiting before new ones get 503")
    ] = 1024,
    max_body_bytes: Annotated[
        int, typer.Option(min=1, help="largest request body (larger: 413)")
    ] = 10 * 2**20,
) -> None:
    """Serve a model over HTTP: POST /predict, GET /metadata, /health, /ready, /metrics."""
    from polytask.serve import ServeSettings
    from polytask.serve import serve as run_server

    run_server(
        ServeSettings(
            str(model_dir),
            runtime=runtime,
            host=host,
            port=port,
            workers=workers,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            max_body_bytes=max_body_bytes,
        )
    )


@app.command()
def export(
    model_dir: Annotated[Path, typer.Argument(help="model or run directory")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write")],
    tasks: Annotated[
        str | None, typer.Option(help="only these tasks, comma-separated (default: all)")
    ] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default 18; 18 to 21)")] = None,
) -> None:
    """Export one ONNX graph: raw columns in, every task's outputs in user units out."""
    from polytask.export import export_onnx

    chosen = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    path = export_onnx(model_dir, output, tasks=chosen, opset=opset)
    err_console.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory")] = Path("runs/demo"),
    samples: Annotated[int, typer.Option(min=100)] = 12000,
    correlation: Annotated[float, typer.Option(min=-1.0, max=1.0)] = 0.9,
    epochs: Annotated[int, typer.Option(min=1)] = 12,
    seed: int = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train on the MMoE paper's synthetic data (Ma et al., KDD 2018); no download."""
    from polytask.demo import run_demo

    result = run_demo(
        out=out, samples=samples, correlation=correlation, epochs=epochs, seed=seed, quiet=quiet
    )
    out_console.print(result.comparison.table())
    out_console.print(
        f"model saved to {out / 'model'}; try: polytask predict {out / 'model'} "
        f"{out / 'data.csv'} -o predictions.csv",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _first_line(doc: str | None) -> str:
    """The first line of a docstring (a task kind's summary in ``polytask list``)."""
    return (doc or "").strip().split("\n", 1)[0]


#: The modules defining the registries ``polytask list`` reads (each imports torch).
_REGISTRY_MODULES = (
    "polytask.data.inputs",
    "polytask.models.encoders",
    "polytask.models.architectures",
    "polytask.balance.base",
    "polytask.tasks.kinds",
    "polytask.data.datasets",
)


def _use_catalog() -> bool:
    """Whether ``polytask list`` reads the committed catalogue (:mod:`polytask.catalog`)
    rather than the live registries: only when that spares importing them (seconds of CPU)
    and says the same. A plug-in's components exist only once its code has run, so an
    installed plug-in (an entry point, found without importing it) means the live registries;
    so do registries already imported in this process, which may hold components registered
    in it, and cost nothing more to read."""
    from polytask.plugins import entry_points  # looked up at each call: tests replace it

    if entry_points():
        return False
    return not any(module in sys.modules for module in _REGISTRY_MODULES)


def _live_rows() -> list[Row]:
    """``polytask list``'s rows from the live registries, plug-ins' components included."""
    from polytask.balance.base import BALANCERS
    from polytask.data.datasets import DATASETS
    from polytask.data.inputs import INPUTS
    from polytask.models.architectures import ARCHITECTURES
    from polytask.models.encoders import ENCODERS
    from polytask.plugins import load_plugins, source_of
    from polytask.tasks.kinds import KINDS

    load_plugins()  # loads the plug-ins not loaded yet (none when already loaded)
    registries: tuple[Registry[Any], ...] = (INPUTS, ENCODERS, ARCHITECTURES, BALANCERS)
    # One row per component: kind, name, summary, and where it comes from (polytask, or the
    # distribution of the plug-in that registered it).
    rows = [
        Row(registry.kind, entry.name, entry.summary, source_of(entry.factory) or BUILT_IN)
        for registry in registries
        for entry in registry
    ]
    rows += [
        Row(
            "task kind",
            kind.name,
            _first_line(type(kind).__doc__),
            source_of(type(kind)) or BUILT_IN,
        )
        for kind in KINDS
    ]
    rows += [Row("dataset", name, DATASETS[name].summary, BUILT_IN) for name in sorted(DATASETS)]
    return rows


def _live_catalog() -> Catalog:
    """What the committed catalogue must hold: the live registries' and schemas' answer for
    polytask's own components (plug-ins left out, so it does not depend on what is
    installed)."""
    from polytask.config_reference import builtin_components

    polytask._load_all()  # the study sections (``--params compare``) register on import
    rows = [row for row in _live_rows() if row.source == BUILT_IN]
    return Catalog(rows, builtin_components())


def _components_table(rows: Sequence[Row]) -> Table:
    table = Table(title="polytask components")
    # Kinds, names and sources are never wrapped or cut (they are typed into configs and
    # searched for); the summaries give way on a narrow terminal.
    for i, col in enumerate(("kind", "name", "summary", "from")):
        if col == "summary":
            table.add_column(col)
        else:
            table.add_column(col, no_wrap=True, min_width=max(len(_row_cells(r)[i]) for r in rows))
    for row in rows:
        table.add_row(*_row_cells(row))
    return table


def _row_cells(row: Row) -> tuple[str, str, str, str]:
    return (row.kind, row.name, row.summary, row.source)


@app.command("list")
def list_components(
    params: Annotated[
        str | None,
        typer.Option(
            "--params", metavar="NAME", help="one component's parameters: --params upgrad"
        ),
    ] = None,
    as_json: JsonOption = False,
    write_catalog: Annotated[
        Path | None,
        typer.Option(
            "--write-catalog",
            metavar="FILE",
            hidden=True,  # a developer's command (regenerates src/polytask/catalog.json)
            help="write the catalogue of polytask's own components (polytask.catalog)",
        ),
    ] = None,
) -> None:
    """List registered inputs, encoders, architectures, balancers, task kinds and datasets,
    polytask's own and those of installed plug-ins (entry point group ``polytask.plugins``)."""
    if write_catalog is not None:
        from polytask.state_io import atomic_write_text

        atomic_write_text(write_catalog, _live_catalog().to_text())
        err_console.print(f"wrote {write_catalog}", markup=False, highlight=False, soft_wrap=True)
        return
    # Without a plug-in, polytask's own components come from the committed catalogue: no
    # torch, pydantic or metrics import (``polytask list`` in well under a second of CPU).
    # With plug-ins, from the listing cached under their digest, once it has been made.
    found = catalog.load() if _use_catalog() else _plugin_catalog()
    if params is not None:
        _print_params(params, found)
        return
    rows = found.rows if found is not None else _live_rows()
    if as_json:
        columns = ("kind", "name", "summary", "from")
        document = [dict(zip(columns, _row_cells(r), strict=True)) for r in rows]
        # What _emit_json writes, without its import of polytask.state_io (torch): strings
        # only here, no NaN to turn into null.
        sys.stdout.write(json.dumps(document, indent=2, allow_nan=False) + "\n")
        sys.stdout.flush()
        return
    out_console.print(_components_table(rows))


def _plugin_catalog() -> Catalog | None:
    """With plug-ins installed: the listing the live registries gave for these plug-ins and
    this polytask, from the cache (:func:`polytask.catalog.read_cached`), made and cached on
    the first call after a change; None when registries are already imported in this
    process (they may hold components registered in it: the live answer is read then)."""
    from polytask.plugins import fingerprint

    if any(module in sys.modules for module in _REGISTRY_MODULES):
        return None
    key = fingerprint(catalog.CATALOG_FILE)
    cached = catalog.read_cached(key)
    if cached is not None:
        return cached
    from polytask.config_reference import all_components
    from polytask.state_io import atomic_write_text

    polytask._load_all()  # the study sections and the plug-ins' components
    found = Catalog(_live_rows(), all_components())
    # A cache that cannot be written (a read-only home) costs the next run its speed only.
    with contextlib.suppress(OSError):
        atomic_write_text(catalog.cache_dir() / catalog.CACHE_FILE, cached_document(key, found))
    return found


def _print_params(name: str, found: Catalog | None) -> None:
    """``polytask list --params NAME``: each component called NAME, its keys one per line
    (from ``found``, a catalogue, when given, else from the live schemas)."""
    if found is not None:
        components = found.find(name)
    else:
        from polytask.config_reference import find_components

        polytask._load_all()  # the study sections and the plug-ins' components, by name
        components = find_components(name)
    for i, component in enumerate(components):
        lines = [""] if i else []
        where = (
            f"[{component.where}] name = {json.dumps(component.name)}"
            if component.kind != "task kind" and component.kind != "section"
            else f"[{component.where}]"
            if component.kind == "section"
            else f"[[tasks]] kind = {json.dumps(component.name)}"
        )
        lines.append(f"{component.kind} {component.name}: {component.summary}".rstrip(": "))
        lines.append(f"  in a config: {where}")
        lines += [f"  {key}: {value}" for key, value in component.extra]
        if not component.keys and not component.extra:
            lines.append("  no parameters")
        for key in component.keys:
            valid = f"; {key.valid}" if key.valid else ""
            line = f"  {key.name}: {key.type} = {key.default}{valid}"
            lines.append(line.replace("`", ""))
            if key.description:
                lines.append(f"      {key.description}".replace("`", ""))
        for line in lines:
            out_console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command("config")
def config_command(
    schema: Annotated[
        bool, typer.Option("--schema", help="print the JSON Schema of a run configuration")
    ] = False,
    reference: Annotated[
        bool, typer.Option("--reference", help="print the reference (docs/config.md) as markdown")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write it to this file instead")
    ] = None,
    plugins: Annotated[
        bool, typer.Option("--plugins", help="include installed plug-ins' components")
    ] = False,
) -> None:
    """Every configuration key, its type, default, valid values and description, generated
    from the schemas: --reference (markdown, as docs/config.md) or --schema (JSON Schema)."""
    from polytask.config_reference import json_schema, reference_markdown
    from polytask.state_io import atomic_write_text

    if schema == reference:
        raise PolytaskError("polytask config: give one of --schema or --reference")
    text = (
        json.dumps(json_schema(include_plugins=plugins), indent=2, ensure_ascii=False) + "\n"
        if schema
        else reference_markdown(include_plugins=plugins)
    )
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write_text(output, text)
    err_console.print(f"wrote {output}", markup=False, highlight=False, soft_wrap=True)


@app.command("init")
def init_command(
    table: Annotated[Path, typer.Argument(help="CSV or Parquet table to profile")],
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            "-t",
            help="a target column, one task each (repeat); COL=KIND sets the kind "
            "(binary | multiclass | regression; default: inferred); COL=binary:LABEL[,LABEL] "
            "counts those labels positive and the rest negative (one-vs-rest)",
        ),
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="configuration file to write")
    ] = Path("run.toml"),
    force: Annotated[bool, typer.Option("--force", help="replace an existing file")] = False,
    rows: Annotated[int, typer.Option(min=10, help="rows read to profile the columns")] = 10_000,
) -> None:
    """Write a commented starting configuration from a table: its columns profiled (numeric,
    categorical, id-like, text, missing fraction) and a task per --target column."""
    from polytask.scaffold import starter_config, write_config

    if output.exists() and not force:  # before reading the table: say it at once
        raise PolytaskError(f"'{output}' exists; pass --force to replace it")
    text = starter_config(table, list(target or []), output, sample_rows=rows)
    write_config(output, text, force=force)
    err_console.print(
        f"wrote {output}; train it: polytask train {output}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def fetch(
    dataset: Annotated[str, typer.Argument(help="dataset name (see polytask list)")],
    root: Annotated[Path, typer.Option(help="data root to download into")],
) -> None:
    """Download a dataset from its public origin and verify its checksum (needs internet)."""
    from polytask.data.datasets import fetch_dataset

    path = fetch_dataset(dataset, root)
    err_console.print(
        f"{dataset}: files verified under {path}", markup=False, highlight=False, soft_wrap=True
    )


@app.command()
def compare(
    config: Annotated[Path, typer.Argument(help="TOML run configuration with a [compare] section")],
    out: Annotated[Path, typer.Option("--out", "-o", help="comparison directory")],
    seeds: Annotated[
        int | None, typer.Option(min=1, help="number of seeds (default: config)")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: train.epochs=5")
    ] = None,
    backend: BackendOption = "local",
    address: AddressOption = None,
    cpus_per_run: CpusPerRunOption = None,
    gpus_per_run: GpusPerRunOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    per_task: Annotated[
        bool,
        typer.Option(
            "--per-task", help="also print every task's table (default: a summary per fraction)"
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Single-task baselines vs multi-task configurations over seeds: is multi-task worth it?"""
    from polytask.config import load_config
    from polytask.studies.backends import make_backend
    from polytask.studies.compare import compare as run_compare

    overrides = list(set_ or [])
    if seeds is not None:
        overrides.append(f"compare.seeds={seeds}")
    cfg = load_config(config, overrides)
    runner = make_backend(
        backend, address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run
    )
    try:
        result = run_compare(cfg, out=out, quiet=quiet, console=err_console, backend=runner)
    finally:
        if runner is not None:
            runner.close()
    wrote = (
        f"wrote {out / 'compare.json'} and {out / 'compare.md'} "
        f"({len(result.trained)} runs trained, {len(result.reused)} already finished)"
    )
    if as_json:
        _emit_json({**result.summary, "trained": result.trained, "reused": result.reused})
        err_console.print(wrote, soft_wrap=True)
        return
    for table in result.tables(per_task):
        out_console.print(table)
    out_console.print(wrote, soft_wrap=True)


@app.command("report")
def report_command(
    directory: Annotated[Path, typer.Argument(help="run, compare or affinity directory")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="report folder (default: DIRECTORY/report)")
    ] = None,
) -> None:
    """Write DIRECTORY/report/index.html: one self-contained page of tables and figures."""
    from polytask.report import report

    index = report(directory, out=out)
    out_console.print(f"report written to {index}", markup=False, highlight=False, soft_wrap=True)


@app.command("affinity")
def affinity_command(
    config: Annotated[Path, typer.Argument(help="TOML run configuration")],
    out: Annotated[Path, typer.Option("--out", "-o", help="affinity directory")],
    probe: Annotated[
        bool, typer.Option(help="only a short training (affinity.probe_epochs, default 1)")
    ] = False,
    epochs: Annotated[int | None, typer.Option(min=1, help="training epochs")] = None,
    max_groups: Annotated[int | None, typer.Option(min=1, help="budget of groups")] = None,
    every: Annotated[int | None, typer.Option(min=1, help="measure every N steps")] = None,
    lr: Annotated[float | None, typer.Option(help="lookahead step size")] = None,
    search: Annotated[
        str | None, typer.Option(help="auto, exhaustive, dynamic-programming or beam")
    ] = None,
    alone_score: Annotated[
        float | None, typer.Option(help="score of a task trained alone (default: not allowed)")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: train.epochs=5")
    ] = None,
    pair_search: Annotated[
        bool,
        typer.Option(
            "--pair-search",
            help="also train every task alone and every pair (DIR/pair_search.json; "
            "--epochs or the config's epochs)",
        ),
    ] = False,
    backend: BackendOption = "local",
    address: AddressOption = None,
    cpus_per_run: CpusPerRunOption = None,
    gpus_per_run: GpusPerRunOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    as_json: JsonOption = False,
) -> None:
    """Task affinity (Fifty et al. 2021), gradient cosines and a suggested grouping.

    The options other than --probe, --epochs, --pair-search and the backend's override the keys
    of the config's affinity section (as --set affinity.KEY=VALUE would). The backend runs the
    pair search's trainings; the affinity measurement is one run, in this process."""
    from polytask.studies.affinity.study import PAIR_SEARCH_FILE, affinity
    from polytask.studies.affinity.study import pair_search as run_pair_search
    from polytask.studies.backends import make_backend

    overrides = list(set_ or [])
    options = {
        "every": every,
        "lr": lr,
        "max_groups": max_groups,
        "search": search,
        "alone_score": alone_score,
    }
    # As --set overrides, so the config's schema checks them and names the key in errors.
    overrides += [
        f"affinity.{key}={value!r}" for key, value in options.items() if value is not None
    ]
    if backend != "local" and not pair_search:
        raise PolytaskError(f"--backend {backend} applies to the trainings of --pair-search")
    runner = make_backend(
        backend, address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run
    )
    try:
        result = affinity(config, out, probe=probe, epochs=epochs, overrides=overrides, quiet=quiet)
        # With --json the document goes to stdout once everything ran; the lines to stderr.
        say = err_console if as_json else out_console
        document: dict[str, Any] = {"affinity": result.to_dict()}
        if not as_json:
            out_console.print(result.table())
        say.print(
            f"suggested groups: {' | '.join(', '.join(g) for g in result.grouping.groups)}; "
            f"wrote {out / 'affinity.json'}",
            soft_wrap=True,
        )
        if pair_search:
            pairs = run_pair_search(
                config, epochs=epochs, overrides=overrides, quiet=quiet, backend=runner, out=out
            )
            document["pair_search"] = pairs.to_dict()
            say.print(
                f"pair search ({pairs.runs} trainings) groups: "
                f"{' | '.join(', '.join(g) for g in pairs.grouping.groups)}; "
                f"wrote {out / PAIR_SEARCH_FILE}",
                soft_wrap=True,
            )
        if as_json:
            _emit_json(document)
    finally:
        if runner is not None:
            runner.close()


@app.command("finetune")
def finetune_command(
    base: Annotated[Path, typer.Argument(help="base model or run directory")],
    config: Annotated[Path, typer.Argument(help="TOML configuration of the fine-tuning run")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run directory")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: finetune.freeze=none")
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    device: Annotated[str | None, typer.Option("--device", help=DEVICE_HELP)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    as_json: JsonOption = False,
) -> None:
    """Fine-tune a trained model: new tasks and/or its own tasks on new data, with its shared
    encoder frozen, partly frozen or not ([finetune] section)."""
    from polytask.config import load_config
    from polytask.studies.finetune import finetune, summary_lines

    cfg = load_config(config, list(set_ or []) + device_override(device))
    target = out or (cfg.resolve(cfg.out) if cfg.out else Path("runs") / config.stem)
    result = finetune(base, cfg, out=target, resume=resume, overwrite=overwrite, quiet=quiet)
    if not _rank_zero():
        return
    _report_run(result, target, as_json, summary_lines(result.predictor.metrics))


@app.command("pareto")
def pareto_command(
    config: Annotated[Path, typer.Argument(help="TOML run configuration ([pareto] section)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Pareto directory")],
    workers: Annotated[
        int | None, typer.Option(min=1, help="runs trained in parallel (default: config)")
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(min=1, help="number of seeds (default: config)")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: pareto.n_points=5")
    ] = None,
    backend: BackendOption = "local",
    address: AddressOption = None,
    cpus_per_run: CpusPerRunOption = None,
    gpus_per_run: GpusPerRunOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    as_json: JsonOption = False,
) -> None:
    """The Pareto front of the task trade-off: one run per preference vector (resumable), its
    non-dominated set and hypervolume, and a preference-conditioned model's front."""
    from polytask.config import load_config
    from polytask.studies.backends import make_backend
    from polytask.studies.pareto import sweep

    cfg = load_config(config, list(set_ or []))
    if backend != "local" and workers is not None:
        raise PolytaskError("--workers applies to the local backend; on Ray use --cpus-per-run")
    runner = make_backend(
        backend, address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run
    )
    try:
        result = sweep(
            cfg,
            out=out,
            seeds=seeds,
            workers=workers,
            quiet=quiet,
            console=err_console,
            backend=runner,
        )
    finally:
        if runner is not None:
            runner.close()
    wrote = (
        f"wrote {out / 'pareto.json'} and {out / 'pareto.md'} "
        f"({len(result.trained)} runs trained, {len(result.reused)} already finished)"
    )
    if as_json:
        _emit_json({**result.summary, "trained": result.trained, "reused": result.reused})
        err_console.print(wrote, soft_wrap=True)
        return
    out_console.print(result.table())
    out_console.print(wrote, soft_wrap=True)


#: Commands that only read and print, and import what they need themselves: ``list`` reads
#: the committed catalogue (no torch, registries or studies) when no plug-in is installed.
#: Start-up lasts until they return, so Ctrl-C anywhere in them is start-up's clean exit
#: (polytask.__main__): they write nothing, but for the developer's ``list --write-catalog``,
#: an atomic rename (the file is whole or untouched).
_READ_ONLY = frozenset({"list"})


def main(started: Callable[[], None] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2.

    The command is invoked below click's ``main`` on purpose: click turns an ``EOFError`` (which
    a truncated gzip file raises deep inside pandas) and a ``KeyboardInterrupt`` into a bare
    ``Abort`` with a blank line, hiding what happened. Here each gets its own one-line message.

    ``started`` is called once start-up is over (the command line built and parsed, the
    studies and plug-ins imported), right before the command runs (not for the read-only
    :data:`_READ_ONLY`): :mod:`polytask.__main__` puts Python's Ctrl-C handling back there
    (see its docstring for why not earlier).
    """
    args = sys.argv[1:]
    command = typer.main.get_command(app)
    try:
        with command.make_context("polytask", list(args)) as ctx:
            # Past ``polytask --help``: load the studies' config sections and the plug-ins,
            # which the package no longer imports up front (see polytask/__init__.py). The
            # top level takes no options, so ``args[0]`` is the command's name.
            if args[0] not in _READ_ONLY:
                polytask._load_all()
                if started is not None:
                    started()
            command.invoke(ctx)
    except PolytaskError as exc:
        _fail(str(exc), 2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except EOFError as exc:
        _fail(f"unexpected end of input ({exc or 'a compressed file is truncated'})", 2)
    except OSError as exc:
        # The machine refused an operation on a path (read-only, disk full, a path under a
        # file, /proc): the user's environment, not a bug, so one line naming the path.
        _fail(_os_error_line(exc), 2)
    except Exception as exc:
        # Usage errors (bad option, missing argument) come from typer's bundled click, whose
        # exception classes are private: recognised by what they can do.
        show = getattr(exc, "show", None)
        code = getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise


def _emit_json(document: Any) -> None:
    """``--json``: one JSON document on stdout, NaN (an undefined metric) written as null."""
    from polytask.state_io import to_json

    sys.stdout.write(to_json(document) + "\n")
    sys.stdout.flush()


def _report_run(result: RunResult, target: Path, as_json: bool, lines: Sequence[str] = ()) -> None:
    """What train, distill and finetune print: the comparison table and ``lines`` on stdout,
    or with ``--json`` the run's results (those of results.json) as one JSON document."""
    saved = f"model saved to {target / 'model'}"
    if as_json:
        _emit_json({"out": str(target), "model": str(target / "model"), **result.predictor.metrics})
        err_console.print(saved, soft_wrap=True)
        return
    out_console.print(result.comparison.table())
    for line in lines:
        out_console.print(line, soft_wrap=True)
    out_console.print(saved, soft_wrap=True)


def _rank_zero() -> bool:
    """Whether this process reports for the run: always, but for ranks 1.. under torchrun."""
    return os.environ.get("RANK", "0") in ("", "0")


def _fail(message: str, code: int) -> None:
    line = " ".join(message.split())
    err_console.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


def _os_error_line(exc: OSError) -> str:
    reason = exc.strerror or type(exc).__name__
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    if not paths:
        return f"{reason} ({exc})"
    return f"{reason}: " + " -> ".join(f"'{os.fsdecode(p)}'" for p in paths)


if __name__ == "__main__":
    main()
