"""Progress of the long data steps (issue 21: "progress during every long step"): silent without
a sink, timed lines on a redirected stream, a live bar on a terminal, and a real run that reads
images announces the step before training and not in a quiet run."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

import polytask.progress as progress
from polytask import Task, fit
from polytask.progress import MIN_ITEMS, console_sink, long_step, reporting


def _lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line.strip()]


def test_a_step_with_no_sink_prints_nothing_and_counts_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with long_step("embedding texts", 10_000) as advance:
        advance(5_000)
        advance(5_000)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_a_redirected_stream_gets_a_start_a_middle_and_an_end_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)  # every advance is "30 s later"
    stream = io.StringIO()
    console = Console(file=stream, width=200, force_terminal=False)
    with reporting(console_sink(console)), long_step("decoding recordings", 200) as advance:
        advance(50)
        advance(150)
    lines = _lines(stream)
    assert lines[0] == "decoding recordings: 200 rows"
    assert lines[1].startswith("decoding recordings: 50 of 200 rows (25%), ")
    assert lines[-1].startswith("decoding recordings: done, 200 rows in ")
    assert len(lines) == 3  # the last advance completes the step: no "200 of 200" line


def test_short_steps_and_the_end_of_the_block_are_silent() -> None:
    stream = io.StringIO()
    console = Console(file=stream, width=200, force_terminal=False)
    with (
        reporting(console_sink(console)),
        long_step("featurising molecules", MIN_ITEMS - 1) as advance,
    ):
        advance(MIN_ITEMS - 1)
    with long_step("featurising molecules", 10_000) as advance:  # outside the block
        advance(10_000)
    assert stream.getvalue() == ""


def test_a_terminal_gets_a_bar_that_reaches_the_total() -> None:
    stream = io.StringIO()
    console = Console(file=stream, width=120, force_terminal=True, color_system=None)
    with reporting(console_sink(console)), long_step("reading images", 100) as advance:
        for _ in range(4):
            advance(25)
    assert "reading images" in stream.getvalue()
    assert "100/100" in stream.getvalue()


def test_a_failing_step_prints_no_done_line() -> None:
    stream = io.StringIO()
    console = Console(file=stream, width=200, force_terminal=False)
    with (
        pytest.raises(ValueError),
        reporting(console_sink(console)),
        long_step("decoding recordings", 100) as advance,
    ):
        advance(10)
        raise ValueError("unreadable")
    assert _lines(stream) == ["decoding recordings: 100 rows"]


def _images(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 8, 8)).astype(np.uint8)
    bright = images.mean(axis=(1, 2)) > 127
    frame: pd.DataFrame = pd.DataFrame({"image": list(images), "bright": bright})
    return frame


@pytest.mark.parametrize("quiet", [False, True])
def test_a_run_reading_images_reports_the_step_before_training(
    quiet: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = _images(120)
    fit(
        frame,
        [Task("bright", "binary", "bright")],
        data_options={"input": {"name": "image"}, "split": {"val": 0.2, "test": 0.2}},
        model={"encoder": {"name": "cnn", "widths": [4]}},
        train={"epochs": 1, "batch_size": 32, "patience": None},
        baselines=False,
        quiet=quiet,
    )
    err = capsys.readouterr().err
    reads = [line for line in err.splitlines() if line.startswith("reading images")]
    if quiet:
        assert reads == []
    else:
        # fitting reads the training rows, then every split is transformed: each is one step.
        assert reads[0] == "reading images: 72 rows"
        assert any(line.startswith("reading images: done, 72 rows in ") for line in reads)
        assert err.index("reading images") < err.index("epoch")
