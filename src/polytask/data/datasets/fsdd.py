"""Free Spoken Digit Dataset (FSDD): spoken digit and speaker from one recording.

Source: Zohar Jackson et al., *Free Spoken Digit Dataset*, https://github.com/Jakobovski/free-spoken-digit-dataset
(CC BY-SA 4.0): 3,000 mono wav recordings at 8 kHz, ``recordings/{digit}_{speaker}_{take}.wav``,
six (male, English-speaking) speakers each saying every digit 0-9 fifty times (takes 0-49).

Two multiclass tasks come from each file name: the digit (10 classes) and the speaker (6).

Split (column ``split``): the dataset's official test set is takes 0-4 of every speaker and
digit (300 recordings, its README); the validation set is carved from the remaining training
takes as takes 5-9 (300 recordings), leaving takes 10-49 (2,400) for training. Every split
thus holds every (speaker, digit) pair in the same proportion; what it tests is new takes of
known speakers (speaker identification, not verification of unseen speakers).

Fetching: the recordings are a folder of 3,000 small files in a git repository rather than one
archive with a published checksum. The registry names one of them (``0_jackson_0.wav``, in
every release) with its SHA-256; :data:`RECORDINGS_SHA256` is the digest of the whole folder
(see :func:`recordings_digest`). To get the data, unpack the ``recordings`` folder of
:data:`ARCHIVE_URL` into ``<data root>/fsdd/recordings``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pandas as pd

from polytask.errors import DataError

FOLDER = "fsdd/recordings"
RELPATH = f"{FOLDER}/0_jackson_0.wav"
URL = (
    "https://raw.githubusercontent.com/Jakobovski/free-spoken-digit-dataset/master/"
    "recordings/0_jackson_0.wav"
)
SHA256 = "eea86018ce1730baaf7f5dd6ec88c1f727dd90203521a9115b489310a248ea05"
ARCHIVE_URL = (
    "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/heads/master.zip"
)
#: :func:`recordings_digest` of the 3,000-recording release (6 speakers).
RECORDINGS_SHA256 = "99aa5e3a7c822ab55b2a3b47e0b05aeb9f011c54837a12e3831ad24108330829"
N_RECORDINGS = 3000

TARGETS: dict[str, str] = {"digit": "multiclass", "speaker": "multiclass"}
# take is the recording's index (it defines the split), split is the split itself.
IGNORE: tuple[str, ...] = ("take", "split")
#: Takes 0-4 are the official test set; takes 5-9 are held out for validation here.
TEST_TAKES = range(0, 5)
VAL_TAKES = range(5, 10)

SUMMARY = "Free Spoken Digit Dataset: digit (10) and speaker (6) from 8 kHz recordings"
CITATION = (
    "Z. Jackson et al. Free Spoken Digit Dataset (FSDD), "
    "https://github.com/Jakobovski/free-spoken-digit-dataset (CC BY-SA 4.0)."
)

_NAME = re.compile(r"(?P<digit>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav")


def _split(take: int) -> str:
    if take in TEST_TAKES:
        return "test"
    return "val" if take in VAL_TAKES else "train"


def load_fsdd(root: Path) -> pd.DataFrame:
    """One row per recording under ``root/fsdd/recordings``.

    Returns:
        Columns ``path`` (absolute path of the wav file), ``digit`` (int64, 0-9), ``speaker``
        (str), ``take`` (int64) and ``split`` (``train``/``val``/``test``), sorted by speaker,
        digit and take.

    Raises:
        DataError: if the folder is missing or holds no recording named as FSDD names them.
    """
    folder = root / FOLDER
    if not folder.is_dir():
        raise DataError(
            f"dataset 'fsdd': folder {folder} not found; unpack the recordings folder of "
            f"{ARCHIVE_URL} there"
        )
    rows = []
    for path in sorted(folder.glob("*.wav")):
        match = _NAME.fullmatch(path.name)
        if match is None:
            continue
        take = int(match["take"])
        rows.append(
            {
                "path": str(path.resolve()),
                "digit": int(match["digit"]),
                "speaker": match["speaker"],
                "take": take,
                "split": _split(take),
            }
        )
    if not rows:
        raise DataError(f"dataset 'fsdd': no recording named digit_speaker_take.wav in {folder}")
    frame: pd.DataFrame = pd.DataFrame(rows).sort_values(
        ["speaker", "digit", "take"], ignore_index=True
    )
    return frame


def recordings_digest(root: Path) -> str:
    """SHA-256 over the sorted recordings: for each, ``name NUL sha256(file) LF``."""
    digest = hashlib.sha256()
    for path in sorted((root / FOLDER).glob("*.wav")):
        file_hash = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(path.name.encode() + b"\0" + file_hash.encode() + b"\n")
    return digest.hexdigest()
