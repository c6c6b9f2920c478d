"""``polytask report``: the page and its PNGs for run, compare and affinity directories, checked
as files and as a person sees them (rendered in headless Chromium)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, synthetic_raw
from polytask import config_from_dict, run
from polytask.data.synthetic import make_mmoe_synthetic
from polytask.report import report
from polytask.run.directory import read_records

pytestmark = pytest.mark.usefixtures("torch_single_thread")

RUN_FIGURES = {
    "learning_curves",
    "validation_metrics",
    "task_weights",
    "gradient_norms",
    "gradient_conflict",
    "dominance",
}
COMPARE_FIGURES = {
    "per_task_metrics",
    "delta_m",
    "data_efficiency_delta_m",
    "data_efficiency_per_task",
}
AFFINITY_FIGURES = {"affinity_heatmap", "gradient_cosine_heatmap", "relationships_over_training"}
PARETO_FIGURES = {"pareto_front", "trade_off_by_preference", "hypervolume_and_cost"}


# -- fixtures: a real tiny run, and compare/affinity files written to the shared schemas -------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, torch_single_thread: None) -> Path:
    """Two tasks (regression + binary) of the MMoE synthetic set, 2 epochs, with baselines."""
    frame = make_mmoe_synthetic(600, 0.5, n_features=8, seed=0)
    raw = synthetic_raw(widths=(16,), epochs=2, batch_size=64, balancer="uncertainty")
    raw["baselines"] = True
    out = tmp_path_factory.mktemp("report") / "run"
    run(config_from_dict(raw), frame=frame, out=out, quiet=True)
    return out


def _stat(values: list[float]) -> dict[str, Any]:
    # A normal-approximation interval is enough for a fixture: the report only displays it.
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "values": values}


TASKS = {
    "income": {"metric": "auroc", "higher_is_better": True},
    "marital": {"metric": "auroc", "higher_is_better": True},
    "age": {"metric": "mae", "higher_is_better": False},
}
#: Per configuration and task, the metric at fraction 1.0; smaller fractions lose some of it.
BASE = {
    "single-task": {"income": 0.930, "marital": 0.970, "age": 8.00},
    "shared-bottom": {"income": 0.940, "marital": 0.965, "age": 7.90},
    "mmoe": {"income": 0.935, "marital": 0.975, "age": 8.60},
}
VERDICTS = {
    "shared-bottom": {"income": "helps", "marital": "hurts", "age": "no significant difference"},
    "mmoe": {"income": "no significant difference", "marital": "helps", "age": "hurts"},
}


def compare_data(fractions: list[float]) -> dict[str, Any]:
    seeds = [0, 1, 2]
    results = []
    for fraction in fractions:
        penalty = 1.0 - fraction
        per_config: dict[str, dict[str, list[float]]] = {}
        for name, base in BASE.items():
            per_config[name] = {}
            for task, value in base.items():
                up = TASKS[task]["higher_is_better"]
                # Less data hurts, and hurts the single-task models most (the effect the
                # data-efficiency curves are for).
                loss = penalty * (0.10 if name == "single-task" else 0.05)
                centre = value - loss if up else value * (1 + loss)
                per_config[name][task] = [centre + 0.002 * (s - 1) * value for s in seeds]
        for name in BASE:
            entry: dict[str, Any] = {
                "fraction": fraction,
                "configuration": name,
                "n_seeds": len(seeds),
                "per_task": {t: _stat(v) for t, v in per_config[name].items()},
            }
            if name != "single-task":
                deltas = []
                for s in range(len(seeds)):
                    changes = []
                    for task, info in TASKS.items():
                        ref = per_config["single-task"][task][s]
                        sign = -1.0 if info["higher_is_better"] else 1.0
                        changes.append(sign * (per_config[name][task][s] - ref) / abs(ref))
                    deltas.append(100 * statistics.fmean(changes))
                entry["delta_m"] = _stat(deltas)
                entry["delta_m_all_metrics"] = _stat([d * 1.1 for d in deltas])
                entry["worst_task"] = {"task": "age", "change_pct": 1.25}
                entry["verdicts"] = {
                    t: {"verdict": VERDICTS[name][t], "change_pct": -1.0, "p_value": 0.0123}
                    for t in TASKS
                }
            results.append(entry)
    return {
        "kind": "polytask-compare",
        "seeds": seeds,
        "fractions": fractions,
        "tasks": TASKS,
        "delta_m_definition": "delta_m% = 100 * mean_k s_k (M_k - M_stl,k) / |M_stl,k|",
        "test": "paired t-test over seeds, two-sided, α = 0.05",
        "configurations": {
            "single-task": {"overrides": []},
            "shared-bottom": {"overrides": ["model.architecture.name=hard"]},
            "mmoe": {"overrides": ["model.architecture.name=mmoe"]},
        },
        "results": results,
    }


def write_compare(directory: Path, fractions: list[float]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(compare_data(fractions), indent=2, ensure_ascii=False)
    (directory / "compare.json").write_text(text, encoding="utf-8")
    return directory


AFFINITY_TASKS = ["a", "b", "c", "d"]
# Row i = the task whose gradient step is taken, column j = the task whose loss changes.
AFFINITY = [
    [0.050, 0.040, -0.010, 0.000],
    [0.030, 0.060, 0.000, -0.020],
    [-0.005, 0.001, 0.040, 0.020],
    [0.002, -0.010, 0.012, 0.030],
]
COSINE = [
    [1.0, 0.6, -0.2, 0.05],
    [0.6, 1.0, 0.0, -0.3],
    [-0.2, 0.0, 1.0, 0.4],
    [0.05, -0.3, 0.4, 1.0],
]


def write_affinity(directory: Path, with_run: Path | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    over = [
        {
            "epoch": e,
            "affinity": (np.array(AFFINITY) * e / 3).tolist(),
            "gradient_cosine": np.clip(np.array(COSINE) * (0.5 + e / 6), -1, 1).tolist(),
        }
        for e in (1, 2, 3)
    ]
    data = {
        "kind": "polytask-affinity",
        "tasks": AFFINITY_TASKS,
        "method": "lookahead (Fifty et al. 2021)",
        "epochs": 3,
        "probe": False,
        "steps_measured": 120,
        "affinity": AFFINITY,
        "gradient_cosine": COSINE,
        "over_training": over,
        "grouping": {
            "groups": [["a", "b"], ["c", "d"]],
            "score": 0.0425,
            "search": "exhaustive",
            "max_groups": 2,
        },
    }
    (directory / "affinity.json").write_text(json.dumps(data), encoding="utf-8")
    if with_run is not None:
        (directory / "run").mkdir(exist_ok=True)
        shutil.copy(with_run / "metrics.jsonl", directory / "run" / "metrics.jsonl")
    return directory


def write_pareto(directory: Path, with_run: Path | None = None) -> Path:
    """A pareto.json as :func:`polytask.studies.pareto.sweep` writes it: a 3-point static sweep, a
    conditioned model and one balancer, one seed, two tasks (AUROC up, MAE down)."""
    directory.mkdir(parents=True, exist_ok=True)
    prefs = [[0.95, 0.05], [0.5, 0.5], [0.05, 0.95]]
    sweep = [(0.90, 9.0), (0.88, 7.5), (0.80, 7.0)]
    cosmos = [(0.89, 8.8), (0.87, 7.8), (0.81, 7.2)]

    def points(values: list[tuple[float, float]], run: str) -> list[dict[str, Any]]:
        return [
            {"preference": r, "run": run, "test": {"income": a, "age": m}, "val": {}}
            for r, (a, m) in zip(prefs, values, strict=True)
        ]

    def entry(name: str, kind: str, pts: list[dict[str, Any]], hv: float) -> dict[str, Any]:
        return {"name": name, "kind": kind, "seed": 0, "complete": True, "points": pts,
                "training_seconds": 10.0 if kind == "sweep" else 3.0, "hypervolume": hv,
                "non_dominated": [True] * len(pts)}  # fmt: skip

    def stat(v: float) -> dict[str, Any]:
        return {"mean": v, "std": 0.0, "values": [v]}

    equal = [{"preference": None, "run": "balancer-equal/seed0",
              "test": {"income": 0.85, "age": 8.0}, "val": {}}]  # fmt: skip
    sets = [
        entry("static sweep", "sweep", points(sweep, "sweep"), 0.2),
        entry("cosmos", "conditioned", points(cosmos, "cosmos/seed0"), 0.19),
        entry("equal", "balancer", equal, 0.1),
    ]
    data = {
        "kind": "polytask-pareto",
        "tasks": {
            "income": {"metric": "auroc", "higher_is_better": True},
            "age": {"metric": "mae", "higher_is_better": False},
        },
        "objectives": "test primary metric",
        "method": "static",
        "sweep": "static sweep",
        "seeds": [0],
        "preferences": prefs,
        "min_weight": 0.05,
        "reference": {"rule": "nadir + 10% of the range", "metric": {"income": 0.79, "age": 9.2}},
        "sets": sets,
        "summary": [
            {
                "name": s["name"],
                "kind": s["kind"],
                "n_seeds": 1,
                "hypervolume": stat(s["hypervolume"]),
                "hypervolume_ratio": stat(s["hypervolume"] / 0.2),
                "training_seconds": stat(s["training_seconds"]),
                "cost_ratio": stat(s["training_seconds"] / 10.0),
            }
            for s in sets
        ],
    }
    (directory / "pareto.json").write_text(json.dumps(data), encoding="utf-8")
    if with_run is not None:
        (directory / "runs" / "cosmos" / "seed0").mkdir(parents=True, exist_ok=True)
        shutil.copy(with_run / "metrics.jsonl", directory / "runs/cosmos/seed0/metrics.jsonl")
    return directory


@pytest.fixture(scope="module")
def pages(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The report page of each kind of directory, made once for the file and browser tests."""
    root = tmp_path_factory.mktemp("pages")
    return {
        "run": report(run_dir),
        "compare": report(write_compare(root / "cmp", [0.25, 1.0])),
        "affinity": report(write_affinity(root / "aff", with_run=run_dir)),
        "pareto": report(write_pareto(root / "pareto", with_run=run_dir)),
    }


def _images(index: Path) -> dict[str, tuple[int, int]]:
    """Name -> (width, height) of each PNG next to the page, after checking it decodes."""
    found = {}
    for png in sorted(index.parent.glob("*.png")):
        with Image.open(png) as img:
            img.load()  # decodes the whole file: a truncated PNG raises here
            assert img.format == "PNG"
            # A plot, not a blank canvas: many distinct colours (lines, text, antialiasing).
            colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours is not None and len(colours) > 30, png.name
            found[png.stem] = img.size
    return found


def _page(index: Path) -> str:
    text = index.read_text(encoding="utf-8")
    # Self-contained: no scripts and nothing fetched; every image is an embedded PNG.
    assert "<script" not in text
    assert not re.search(r"""(?:src|href)=["'](?!data:)""", text)
    return text


def _declared(text: str) -> int:
    match = re.search(r'data-figures="(\d+)"', text)
    assert match is not None
    return int(match.group(1))


def _cells(text: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", text)]


# -- the files ---------------------------------------------------------------------------------


def test_run_report_writes_page_and_pngs(run_dir: Path, pages: dict[str, Path]) -> None:
    index = pages["run"]
    assert index == run_dir / "report" / "index.html"
    sizes = _images(index)
    assert set(sizes) == RUN_FIGURES
    for name, (width, height) in sizes.items():
        assert width == 900 and 250 <= height <= 800, (name, width, height)
    text = _page(index)
    assert _declared(text) == len(RUN_FIGURES) == text.count("<img ")
    for name in RUN_FIGURES:
        assert f'data-file="{name}.png"' in text
    # The results table shows the run's own numbers (4 significant digits).
    results = json.loads((run_dir / "results.json").read_text())
    row = next(r for r in results["comparison"]["tasks"] if r["task"] == "label")
    cells = _cells(text)
    i = cells.index("label")
    assert cells[i + 1] == "auroc ↑"
    assert cells[i + 2] == f"{row['multi_task']:.4g}"
    assert cells[i + 3] == f"{row['single_task']:.4g}"
    # The raw change with its percentage, and the word: better or worse in the metric's direction.
    diff = row["multi_task"] - row["single_task"]
    assert cells[i + 4] == f"{diff:+.4f} ({100 * diff / abs(row['single_task']):+.2f}%)"
    assert cells[i + 5] == ("better" if diff > 0 else "worse" if diff < 0 else "same")


def test_old_run_without_diagnostics_skips_those_figures(run_dir: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    lines = []
    for record in read_records(run_dir):
        for key in ("grad_cosines", "conflicts", "dominance", "grad_norms"):
            record.pop(key, None)
        lines.append(json.dumps(record))
    (old / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    index = report(old)
    assert set(_images(index)) == {"learning_curves", "validation_metrics", "task_weights"}
    text = _page(index)
    assert _declared(text) == 3 == text.count("<img ")
    assert "no &#x27;grad_cosines&#x27;" in text
    assert "no &#x27;dominance&#x27;" in text
    assert "Gradient norms: not logged" in text
    assert "has not finished" in text  # no results.json


def test_csv_log_reads_back_like_jsonl(run_dir: Path, tmp_path: Path) -> None:
    from polytask.train.trainer import _flatten_row

    records = read_records(run_dir)
    flat = [_flatten_row(r) for r in records]
    header = list(dict.fromkeys(k for row in flat for k in row))
    lines = [",".join(header)] + [",".join(str(row.get(k, "")) for k in header) for row in flat]
    (tmp_path / "metrics.csv").write_text("\n".join(lines) + "\n")
    back = read_records(tmp_path)
    assert len(back) == len(records) == 2
    for a, b in zip(records, back, strict=True):
        assert b["epoch"] == a["epoch"] and b["best"] == a["best"]
        assert b["val_metrics"]["label"]["auroc"] == pytest.approx(
            a["val_metrics"]["label"]["auroc"]
        )
        assert b["grad_cosines"]["value|label"] == pytest.approx(a["grad_cosines"]["value|label"])
        assert b["train_loss"] == pytest.approx(a["train_loss"])


def test_compare_report_two_fractions(pages: dict[str, Path]) -> None:
    index = pages["compare"]
    sizes = _images(index)
    assert set(sizes) == COMPARE_FIGURES
    assert all(300 <= w <= 1000 and 200 <= h <= 1200 for w, h in sizes.values()), sizes
    text = _page(index)
    assert _declared(text) == len(COMPARE_FIGURES) == text.count("<img ")
    data = compare_data([0.25, 1.0])
    entry = next(
        r for r in data["results"] if r["fraction"] == 1.0 and r["configuration"] == "mmoe"
    )
    dm = entry["delta_m"]
    expected = f"{dm['mean']:+.2f}% [{dm['ci_low']:+.2f}%, {dm['ci_high']:+.2f}%]"
    assert expected in _cells(text)
    # mmoe gains 0.5% on income and marital (AUROC, higher is better: negative change) and
    # loses 7.5% on age (MAE 8.6 vs 8.0): Δm ≈ (-0.54 - 0.52 + 7.5) / 3 ≈ +2.15%, the whole
    # interval above 0, so the cell is red.
    hand = 100 * (-0.005 / 0.930 - 0.005 / 0.970 + 0.60 / 8.00) / 3
    assert dm["mean"] == pytest.approx(hand, abs=0.01) and dm["ci_low"] > 0
    assert f'<td class="hurts">{expected}</td>' in text
    # Verdict cells: coloured by verdict, with change and p-value.
    assert '<td class="helps">helps (-1.00%, p = 0.0123)</td>' in text
    assert '<td class="hurts">hurts (-1.00%, p = 0.0123)</td>' in text
    assert text.count("no significant difference (") == 4  # 2 per fraction
    # The per-task table at fraction 0.25 shows the single-task income AUROC mean.
    income = entry_mean(data, 0.25, "single-task", "income")
    assert any(c.startswith(f"{income:.4g} [") for c in _cells(text))


def entry_mean(data: dict[str, Any], fraction: float, name: str, task: str) -> float:
    entry = next(
        r for r in data["results"] if r["fraction"] == fraction and r["configuration"] == name
    )
    return float(entry["per_task"][task]["mean"])


def test_compare_report_one_fraction_explains_missing_curves(tmp_path: Path) -> None:
    directory = write_compare(tmp_path / "cmp", [1.0])
    stale = directory / "report" / "stale.png"
    stale.parent.mkdir()
    stale.write_bytes(b"not a png")
    index = report(directory)
    assert not stale.exists()  # the report folder is replaced as a whole
    assert set(_images(index)) == {"per_task_metrics", "delta_m"}
    text = _page(index)
    assert _declared(text) == 2
    assert "Data-efficiency curves: not shown" in text


def test_compare_report_before_any_result(tmp_path: Path) -> None:
    # compare.json is rewritten after each run: the first version may hold no result yet.
    directory = tmp_path / "cmp"
    write_compare(directory, [0.5, 1.0])
    data = json.loads((directory / "compare.json").read_text())
    data["results"] = []
    (directory / "compare.json").write_text(json.dumps(data))
    text = _page(report(directory))
    assert _declared(text) == 0 and "<img " not in text
    assert "Partial comparison: 0 of 6" in text
    assert "Δm: no multi-task results yet." in text


def test_affinity_report_with_its_run(pages: dict[str, Path]) -> None:
    index = pages["affinity"]
    sizes = _images(index)
    expected = AFFINITY_FIGURES | {f"run_{n}" for n in RUN_FIGURES}
    assert set(sizes) == expected
    text = _page(index)
    assert _declared(text) == len(expected)
    # Pairs ranked by mutual affinity (mean of both directions): a–b 0.035, c–d 0.016, ...
    pairs = [c for c in _cells(text) if " – " in c]
    assert pairs[:3] == ["a – b", "c – d", "a – d"]
    i = _cells(text).index("a – b")
    assert _cells(text)[i + 1 : i + 5] == ["0.04", "0.03", "0.035", "0.6"]
    assert '<td>1</td><td class="text">a, b</td>' in text
    assert '<td>2</td><td class="text">c, d</td>' in text


def test_pareto_report_with_its_conditioned_run(pages: dict[str, Path]) -> None:
    index = pages["pareto"]
    expected = PARETO_FIGURES | {f"conditioned_{n}" for n in RUN_FIGURES}
    assert set(_images(index)) == expected
    text = _page(index)
    assert _declared(text) == len(expected)
    cells = _cells(text)
    i = cells.index("cosmos")
    # set, kind, seeds, hypervolume, HV / sweep, train s, cost / sweep
    assert cells[i : i + 7] == ["cosmos", "conditioned", "1", "0.19", "95.0%", "3", "30.0%"]
    assert "income 0.79, age 9.2" in text


# -- the command line --------------------------------------------------------------------------


def test_cli_report(tmp_path: Path) -> None:
    directory = write_affinity(tmp_path / "aff")
    res = run_cli("report", directory, "--out", tmp_path / "elsewhere")
    assert res.code == 0, res.err
    assert str(tmp_path / "elsewhere" / "index.html") in res.out
    assert set(_images(tmp_path / "elsewhere" / "index.html")) == AFFINITY_FIGURES
    assert not (directory / "report").exists()


def test_cli_report_never_replaces_a_folder_of_user_files(tmp_path: Path) -> None:
    directory = write_affinity(tmp_path / "aff")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n", encoding="utf-8")
    (mine / "index.html").write_text("<html>my own page</html>\n", encoding="utf-8")
    res = run_cli("report", directory, "--out", mine)
    assert res.code == 2
    line = res.err.strip()
    assert "\n" not in line and str(mine) in line and "did not write" in line, line
    assert sorted(p.name for p in mine.iterdir()) == ["index.html", "notes.txt"]
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "keep me\n"
    # An earlier report in the same folder is replaced as a whole, as before.
    assert run_cli("report", directory, "--out", tmp_path / "again").code == 0
    (tmp_path / "again" / "stale.png").write_bytes(b"")
    assert run_cli("report", directory, "--out", tmp_path / "again").code == 0
    assert not (tmp_path / "again" / "stale.png").exists()


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: d.mkdir(), "is not a polytask run, compare, affinity or pareto directory"),
        (lambda d: None, "not found"),
        (
            lambda d: (d.mkdir(), (d / "compare.json").write_text('{"kind": "other"}')),
            "expected 'polytask-compare'",
        ),
        (
            lambda d: (d.mkdir(), (d / "affinity.json").write_text("{broken")),
            "cannot read",
        ),
    ],
)
def test_cli_bad_dir_one_line_exit_2(tmp_path: Path, setup: Any, expected: str) -> None:
    target = tmp_path / "target"
    setup(target)
    res = run_cli("report", target)
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert lines[0].startswith("error: report:") and expected in lines[0]
    assert str(target) in lines[0]
    if "not a polytask" in expected:
        for name in ("metrics.jsonl", "compare.json", "affinity.json", "pareto.json"):
            assert name in lines[0]
    assert not (target / "report").exists()


# -- as a person sees it: headless Chromium ---------------------------------------------------


def _absent(message: str) -> None:
    # Like require_data: a developer without Chromium skips; CI installs it (.ci/run), so
    # there a skip would hide that the page was never looked at.
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name) or (name if Path(name).is_file() else None)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver_path = _find("chromedriver", "/usr/lib/chromium/chromedriver")
    if chromium is None or driver_path is None:
        _absent(
            "Chromium or chromedriver not found: apt-get install chromium chromium-driver "
            "(the report's browser test needs them)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _absent("selenium not installed: pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,900",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium then never runs Selenium Manager (no download).
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


_FIGURES_JS = """
return Array.from(document.querySelectorAll('figure')).map(f => {
  const img = f.querySelector('img');
  const cap = f.querySelector('figcaption');
  const box = img ? img.getBoundingClientRect() : null;
  return {
    complete: img ? img.complete : false,
    natural: img ? img.naturalWidth : 0,
    shown: box ? box.width * box.height : 0,
    file: img ? img.dataset.file : null,
    caption: cap ? cap.innerText : ''
  };
});
"""


@pytest.mark.parametrize("kind", ["run", "compare", "affinity", "pareto"])
def test_page_renders_every_figure_in_chromium(
    kind: str, pages: dict[str, Path], browser: Any
) -> None:
    index = pages[kind]
    browser.get_log("browser")  # drop what an earlier page logged
    browser.get(index.resolve().as_uri())
    severe = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == [], severe
    declared = int(browser.find_element("css selector", "main").get_attribute("data-figures"))
    shown = browser.execute_script(_FIGURES_JS)
    pngs = {p.name for p in index.parent.glob("*.png")}
    assert declared == len(shown) == len(pngs) >= 4
    for number, fig in enumerate(shown, 1):
        assert fig["complete"] and fig["natural"] > 0, fig
        assert fig["shown"] > 100 * 100, fig  # laid out at a visible size, not collapsed
        assert fig["file"] in pngs
        assert fig["caption"].startswith(f"Figure {number}. ") and len(fig["caption"]) > 40
    text = browser.find_element("id", "figure-count").text
    assert text == f"{declared} figures"
