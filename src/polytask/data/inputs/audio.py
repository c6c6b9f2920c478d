"""Recordings: one per row, as an audio file path (wav, flac, ogg...) or an in-memory array.

Files are read with ``soundfile`` (libsndfile), an optional dependency
(``pip install 'polytask[audio]'``). Multi-channel recordings are mixed down to mono (the
channel mean). Arrays are 1-D (samples) or 2-D ``samples x channels`` (as ``soundfile`` reads a
file); integer arrays are scaled to [-1, 1) by their type's range, as file samples are.

Every recording must be at ``sample_rate``: a file at another rate is an error, never silently
resampled (resampling changes what the model hears; do it once, outside, on purpose). In-memory
arrays carry no rate and are taken to be at ``sample_rate``.

Every recording is brought to one fixed length, ``seconds`` (default: the longest training
recording, capped at ``max_seconds``): shorter ones are zero-padded at the end, longer ones
cropped (``crop``: keep the start or the centre). The model reads the raw waveform; the
spectrogram front end belongs to the encoder (:mod:`polytask.models.audio`).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, Field
from torch import Tensor

from polytask.config_errors import Schema
from polytask.data.arrays import is_missing, resolve_path
from polytask.data.inputs.base import INPUTS, InputProcessor, StoredState, parse_state
from polytask.data.spec import InputSpec
from polytask.errors import ConfigError, DataError
from polytask.progress import long_step

#: Highest sample rate and longest fixed length a config may ask for: an hour at 384 kHz is
#: already 1.4e9 samples per recording.
MAX_SAMPLE_RATE = 384_000
MAX_SECONDS = 3600.0


class AudioParams(Schema):
    """Parameters of the audio input."""

    column: str = Field(default="audio", description="column of audio file paths or 1-D arrays")
    sample_rate: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SAMPLE_RATE,
        description="samples per second every recording must have; default: the rate of the "
        "first training file (required when the column holds arrays)",
    )
    seconds: float | None = Field(
        default=None,
        gt=0,
        le=MAX_SECONDS,
        description="fixed length; default: the longest training recording",
    )
    max_seconds: float = Field(
        default=10.0,
        gt=0,
        le=MAX_SECONDS,
        description="cap on the fitted length when seconds is not set",
    )
    crop: Literal["start", "center"] = Field(
        default="start", description="which part of a longer recording to keep"
    )


def _soundfile() -> ModuleType:
    try:
        import soundfile  # type: ignore[import-untyped]  # (ships no type information)
    except ImportError:
        raise ConfigError(
            "data.input 'audio': reading audio files needs the soundfile package; run: "
            "pip install 'polytask[audio]'"
        ) from None
    module: ModuleType = soundfile
    return module


def _reason(exc: Exception) -> str:
    """libsndfile's own reason (its exceptions' text repeats the path we already name)."""
    return str(getattr(exc, "error_string", None) or exc)


def _scale(array: np.ndarray) -> np.ndarray:
    """float32 samples; integer PCM scaled to [-1, 1) by its type's range."""
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        # Unsigned PCM (8-bit wav) is centred on the middle of its range.
        offset = (int(info.max) + int(info.min) + 1) / 2
        return ((array.astype(np.float64) - offset) / (int(info.max) - offset + 1)).astype(
            np.float32
        )
    return array.astype(np.float32)


def _mono(array: np.ndarray, where: str) -> np.ndarray:
    """1-D float32 samples: ``samples x channels`` arrays are averaged over channels."""
    if array.ndim == 2:
        array = array.mean(axis=1)
    if array.ndim != 1:
        raise DataError(
            f"{where}: a recording is 1-D (samples) or 2-D (samples x channels), "
            f"got shape {array.shape}"
        )
    if array.size == 0:
        raise DataError(f"{where}: the recording is empty")
    return array


class AudioInput(InputProcessor):
    """Recordings -> ``{"audio": float32[N, T]}`` at one sample rate and length."""

    name = "audio"
    reads_files = True

    def __init__(self, params: BaseModel) -> None:
        assert isinstance(params, AudioParams)
        super().__init__(params)
        self.p = params
        self.sample_rate = 0  # fitted when params.sample_rate is unset
        self.samples = 0  # T, fitted when params.seconds is unset

    @property
    def columns(self) -> list[str]:
        return [self.p.column]

    def _expected_rate(self) -> int | None:
        return self.p.sample_rate or self.sample_rate or None

    def _check_rate(self, rate: int, path: Path, where: str) -> None:
        expected = self._expected_rate()
        if expected is not None and rate != expected:
            origin = (
                "data.input.sample_rate"
                if self.p.sample_rate
                else "the first training file's rate; set data.input.sample_rate"
            )
            raise DataError(
                f"{where}: file '{path}' is sampled at {rate} Hz, expected {expected} Hz "
                f"({origin}); resample it first"
            )
        if expected is None:
            self.sample_rate = rate

    def _read(self, value: object, base_dir: Path | None, where: str) -> np.ndarray:
        """The cell's recording as mono float32 samples at the expected rate."""
        if isinstance(value, str | Path):
            path = resolve_path(str(value), base_dir)
            if not path.is_file():
                raise DataError(f"{where}: file '{path}' not found")
            sf = _soundfile()
            try:
                data, rate = sf.read(str(path), dtype="float32", always_2d=True)
            except (RuntimeError, TypeError, ValueError) as exc:
                raise DataError(
                    f"{where}: cannot read audio file '{path}': {_reason(exc)}"
                ) from None
            self._check_rate(int(rate), path, where)
            return _mono(np.asarray(data, dtype=np.float32), where)
        if isinstance(value, np.ndarray | list | tuple):
            if self._expected_rate() is None:
                raise ConfigError(
                    "config error: data.input.sample_rate: the column holds arrays, which carry "
                    "no sample rate; set it"
                )
            return _mono(_scale(np.asarray(value)), where)
        raise DataError(
            f"{where}: expected an audio file path or an array, got {type(value).__name__}"
        )

    def _fit_length(self, value: object, base_dir: Path | None, where: str) -> int:
        """A recording's length in samples, from the file header when it is a file."""
        if isinstance(value, str | Path):
            path = resolve_path(str(value), base_dir)
            if not path.is_file():
                raise DataError(f"{where}: file '{path}' not found")
            sf = _soundfile()
            try:
                info = sf.info(str(path))
            except (RuntimeError, TypeError, ValueError) as exc:
                raise DataError(
                    f"{where}: cannot read audio file '{path}': {_reason(exc)}"
                ) from None
            self._check_rate(int(info.samplerate), path, where)
            frames = int(info.frames)
            if frames <= 0:
                raise DataError(f"{where}: file '{path}' holds no samples")
            return frames
        return int(self._read(value, base_dir, where).shape[0])

    def _cells(self, df: pd.DataFrame, source: str) -> list[tuple[object, str]]:
        self.require_columns(df, source)
        cells = []
        for row, value in df[self.p.column].items():
            where = f"{source}: column '{self.p.column}', row {row}"
            if is_missing(value):
                raise DataError(f"{where}: empty cell; every row needs a recording")
            cells.append((value, where))
        return cells

    def _fix_length(self, samples: np.ndarray) -> np.ndarray:
        t = self.samples
        n = samples.shape[0]
        if n >= t:
            start = 0 if self.p.crop == "start" else (n - t) // 2
            return samples[start : start + t]
        out = np.zeros(t, dtype=np.float32)
        out[:n] = samples
        return out

    def fit(self, train: pd.DataFrame, source: str, base_dir: Path | None) -> None:
        self.sample_rate = 0
        cells = self._cells(train, source)
        if not cells:
            raise DataError(f"{source}: column '{self.p.column}' holds no recording")
        lengths = []
        with long_step("measuring recordings", len(cells), "recordings") as advance:
            for value, where in cells:
                lengths.append(self._fit_length(value, base_dir, where))
                advance(1)
        rate = self._expected_rate()
        assert rate is not None  # the first cell set it or raised
        self.sample_rate = rate
        if self.p.seconds is not None:
            self.samples = max(1, round(self.p.seconds * rate))
        else:
            self.samples = min(max(lengths), max(1, math.floor(self.p.max_seconds * rate)))

    def transform(
        self, df: pd.DataFrame, source: str, base_dir: Path | None = None
    ) -> dict[str, Tensor]:
        if self.samples <= 0:
            raise DataError(f"{source}: the audio input is used before it was fitted")
        cells = self._cells(df, source)
        out = np.zeros((len(cells), self.samples), dtype=np.float32)
        with long_step("decoding recordings", len(cells), "recordings") as advance:
            for i, (value, where) in enumerate(cells):
                out[i] = self._fix_length(self._read(value, base_dir, where))
                advance(1)
        return {"audio": torch.from_numpy(out)}

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(kind="audio", shape=[self.samples], sample_rate=self.sample_rate)

    def state(self) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate, "samples": self.samples}

    def load_state(self, state: dict[str, Any]) -> None:
        stored = parse_state(AudioState, state)
        self.sample_rate, self.samples = stored.sample_rate, stored.samples


#: Most samples a fitted recording length may have: the longest length a config can ask for.
MAX_SAMPLES = round(MAX_SAMPLE_RATE * MAX_SECONDS)


class AudioState(StoredState):
    """What :class:`AudioInput` fits, as stored: a rate and a length within the settings'
    bounds (a model file must not choose a larger allocation per recording)."""

    sample_rate: int = Field(ge=1, le=MAX_SAMPLE_RATE)
    samples: int = Field(ge=1, le=MAX_SAMPLES)


@INPUTS.register("audio", params=AudioParams, summary="a recording per row (audio file or array)")
def build_audio(params: BaseModel) -> InputProcessor:
    return AudioInput(params)
