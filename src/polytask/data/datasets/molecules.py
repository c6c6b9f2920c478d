"""MoleculeNet Tox21 and QM8, with molecular features computed from SMILES by RDKit.

Source: Wu, Ramsundar, Feinberg, Gomes, Geniesse, Pappu, Leswing and Pande, "MoleculeNet: a
benchmark for molecular machine learning", Chemical Science 9 (2018) 513-530. The files are the
copies in the chemprop repository (``data/tox21.csv``, ``data/qm8.csv.gz``; MIT licence), pinned
here to one commit so that the checksums stay valid.

* **Tox21**: 7,831 compounds, 12 binary toxicity assays (nuclear-receptor ``NR-*`` and
  stress-response ``SR-*`` panels of the Tox21 Data Challenge 2014); a blank cell means the
  compound was not tested in that assay (about 17% of the labels), which the pipeline masks.
* **QM8**: 21,786 small organic molecules (up to eight heavy atoms, from GDB-17) with the first
  two singlet excitation energies ``E1``/``E2`` (Hartree) and oscillator strengths ``f1``/``f2``
  from three levels of theory (CC2, PBE0, CAM-B3LYP): 12 regression tasks. Energies sit near
  0.22 while strengths are mostly near 0 with a tail to 0.7, so each target is standardised on
  the training rows by the pipeline (``fit_task``). The distributed file repeats the four PBE0
  columns; the loader checks that the copies are identical and keeps one, or four targets
  would count twice in an equal-weight loss.

Features (both datasets): the 2-D descriptors of :data:`DESCRIPTORS` followed by a Morgan
fingerprint (Rogers and Hahn, "Extended-Connectivity Fingerprints", J. Chem. Inf. Model. 50
(2010) 742-754) of radius 2 folded to ``n_bits`` 0/1 columns, the ECFP4 bit vector that
MoleculeNet uses for its fingerprint baselines. The SMILES column is kept but ignored as a
feature. RDKit is an optional dependency (``pip install 'polytask[chem]'``) imported only when
a molecule is featurised, so ``polytask list`` and the other datasets work without it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from polytask.data.chem import (
    DEFAULT_BITS,
    DESCRIPTORS,
    FINGERPRINT_PREFIX,
    MORGAN_RADIUS,
    featurise_smiles,
    fingerprint_columns,
)
from polytask.errors import DataError

# The chemprop commit whose data/ folder holds the files described in ../shared/data/README.md
# (tox21.csv has the same length and content as the shared copy).
_CHEMPROP_COMMIT = "b83635bcddaddcdb91d453128edec9f2be0d25cf"
_CHEMPROP_DATA = f"https://raw.githubusercontent.com/chemprop/chemprop/{_CHEMPROP_COMMIT}/data"

TOX21_RELPATH = "molecules/tox21.csv"
TOX21_URL = f"{_CHEMPROP_DATA}/tox21.csv"
TOX21_SHA256 = "b58cc1f683e78e3c7a1bf7116e9aac0119804018d100f7b8cdb0857941c31aca"

QM8_RELPATH = "molecules/qm8.csv.gz"
QM8_URL = f"{_CHEMPROP_DATA}/qm8.csv.gz"
QM8_SHA256 = "04c445ef01a22b6fbe032c10bccd4c73704c3fd96e3c96a675c1b3a7658df877"

SMILES = "smiles"
IGNORE: tuple[str, ...] = (SMILES,)

TOX21_TASKS: tuple[str, ...] = (
    "NR-AR",
    "NR-AR-LBD",
    "NR-AhR",
    "NR-Aromatase",
    "NR-ER",
    "NR-ER-LBD",
    "NR-PPAR-gamma",
    "SR-ARE",
    "SR-ATAD5",
    "SR-HSE",
    "SR-MMP",
    "SR-p53",
)
QM8_TASKS: tuple[str, ...] = tuple(
    f"{quantity}-{method}"
    for method in ("CC2", "PBE0", "CAM")
    for quantity in ("E1", "E2", "f1", "f2")
)
TOX21_TARGETS: dict[str, str] = {name: "binary" for name in TOX21_TASKS}
QM8_TARGETS: dict[str, str] = {name: "regression" for name in QM8_TASKS}

TOX21_SUMMARY = "MoleculeNet Tox21: 12 binary toxicity assays (17% unlabelled), RDKit features"
QM8_SUMMARY = "MoleculeNet QM8: 12 excited-state energies and strengths, RDKit features"
_MOLECULENET = (
    "Wu et al. MoleculeNet: a benchmark for molecular machine learning. Chemical Science 9 "
    "(2018) 513-530. Files from the chemprop repository, data/ (MIT licence)."
)
TOX21_CITATION = f"{_MOLECULENET} Assays: Tox21 Data Challenge 2014 (NIH/EPA/FDA)."
QM8_CITATION = (
    f"{_MOLECULENET} Molecules and labels: Ramakrishnan, Hartmann, Tapavicza and von "
    "Lilienfeld, Electronic spectra from TDDFT and machine learning in chemical space, "
    "J. Chem. Phys. 143 (2015) 084111."
)

#: The featurisation itself is shared with the ``smiles`` input processor: see
#: :mod:`polytask.data.chem`.
__all__ = [
    "DEFAULT_BITS",
    "DESCRIPTORS",
    "FINGERPRINT_PREFIX",
    "MORGAN_RADIUS",
    "featurise",
    "fingerprint_columns",
    "load_qm8",
    "load_tox21",
    "read_qm8",
    "read_tox21",
]


def _featurise(smiles: Sequence[str], n_bits: int, radius: int) -> tuple[pd.DataFrame, list[int]]:
    """Features of the SMILES RDKit can parse, and the positions of those it cannot."""
    features = featurise_smiles(smiles, n_bits, radius, descriptors=True)
    parsed = features.parsed
    frame = pd.concat(
        [
            pd.DataFrame(features.descriptors[parsed], columns=list(DESCRIPTORS)),
            pd.DataFrame(features.bits[parsed], columns=fingerprint_columns(n_bits)),
        ],
        axis=1,
    )
    return frame, features.failed


def featurise(
    smiles: Sequence[str], n_bits: int = DEFAULT_BITS, radius: int = MORGAN_RADIUS
) -> pd.DataFrame:
    """RDKit features of molecules given as SMILES, one row per molecule in input order.

    Use this to build the feature columns of new molecules for ``polytask predict``: the
    columns match those of the registered datasets when ``n_bits`` and ``radius`` do.

    Args:
        smiles: SMILES strings.
        n_bits: Length of the folded Morgan fingerprint.
        radius: Morgan radius (2 gives ECFP4).

    Returns:
        The :data:`DESCRIPTORS` columns (float64) followed by ``n_bits`` fingerprint columns
        (uint8, 0/1), with a RangeIndex.

    Raises:
        DataError: if RDKit is not installed, or naming the first SMILES it cannot parse (rows
            are never dropped here, so predictions stay aligned with the input).
    """
    frame, failed = _featurise(smiles, n_bits, radius)
    if failed:
        raise DataError(
            f"RDKit cannot parse the SMILES of row {failed[0]} ({smiles[failed[0]]!r}); "
            f"{len(failed)} of {len(smiles)} molecules are unreadable"
        )
    return frame


def _with_features(
    table: pd.DataFrame, path: Path, n_bits: int, radius: int, targets: Sequence[str]
) -> pd.DataFrame:
    """``table`` (smiles + targets) joined with its features; unparseable rows dropped."""
    features, failed = _featurise(table[SMILES].tolist(), n_bits, radius)
    if failed:
        # Dropping rather than failing: the files are fixed by their checksums, and which
        # SMILES RDKit accepts changes between versions (2024+ rejects the hypervalent [AlH3]
        # salts of Tox21), so an error would make the whole dataset unusable over 0.1% of it.
        # Line numbers count the header as line 1.
        lines = ", ".join(str(i + 2) for i in failed[:5]) + (", ..." if len(failed) > 5 else "")
        warnings.warn(
            f"{path}: dropped {len(failed)} of {len(table)} molecules whose SMILES RDKit "
            f"cannot parse (lines {lines})",
            UserWarning,
            stacklevel=3,
        )
    kept = table.drop(index=table.index[failed]).reset_index(drop=True)
    frame: pd.DataFrame = pd.concat([kept[[SMILES, *targets]], features], axis=1)
    frame.attrs["dropped_smiles"] = [str(table[SMILES].iloc[i]) for i in failed]
    return frame


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    try:
        # keep_default_na=False + na_values=[""]: only a blank cell is a missing label, and a
        # SMILES such as "NA" (sodium would be "[Na]", but the rule should not depend on it)
        # stays text.
        frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, na_values=[""])
    except (ValueError, OSError, pd.errors.ParserError, EOFError) as exc:
        raise DataError(f"{path}: not the {what} CSV ({exc})") from exc
    if len(frame) < 2:
        raise DataError(f"{path}: the {what} CSV has no rows")
    return frame


def _numbers(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Parse every column of ``frame`` as float64, naming the first cell that is not a number."""
    out: pd.DataFrame = frame.apply(pd.to_numeric, errors="coerce")
    bad = out.isna() & frame.notna()
    if bool(bad.to_numpy().any()):
        row, col = np.argwhere(bad.to_numpy())[0]
        raise DataError(
            f"{path}: column {frame.columns[col]!r} should hold numbers but line "
            f"{frame.index[row] + 1} has {frame.iat[row, col]!r}"
        )
    numbers: pd.DataFrame = out.astype("float64")
    return numbers


def read_tox21(root: Path) -> pd.DataFrame:
    """The Tox21 table as distributed: ``smiles`` and the 12 labels (Int64 0/1, ``<NA>`` blank).

    Raises:
        DataError: if the header is not the expected one or a label is not 0, 1 or blank.
    """
    path = root / TOX21_RELPATH
    raw = _read_csv(path, "Tox21")
    header = raw.iloc[0].tolist()
    if header != [SMILES, *TOX21_TASKS]:
        raise DataError(f"{path}: expected the columns smiles,{','.join(TOX21_TASKS)}")
    body = raw.iloc[1:].set_axis(header, axis=1)
    labels = _numbers(body[list(TOX21_TASKS)], path)
    outside = ~(labels.isin([0.0, 1.0]) | labels.isna())
    if bool(outside.to_numpy().any()):
        row, col = np.argwhere(outside.to_numpy())[0]
        raise DataError(
            f"{path}: assay {TOX21_TASKS[col]!r} should hold 0, 1 or blank but line "
            f"{labels.index[row] + 1} has {labels.iat[row, col]!r}"
        )
    table: pd.DataFrame = pd.concat([body[[SMILES]], labels.astype("Int64")], axis=1)
    table = table.reset_index(drop=True)
    return table


def read_qm8(root: Path) -> pd.DataFrame:
    """The QM8 table with each repeated column kept once: ``smiles`` and 12 float64 targets.

    The distributed header names the four PBE0 columns twice. Each repeated name is checked to
    hold exactly the same cells as its first occurrence (compared as the file's text, blank
    cells included) before the copy is dropped.

    Raises:
        DataError: if a repeated column differs from its first occurrence, or the distinct
            columns are not smiles + :data:`QM8_TASKS`.
    """
    path = root / QM8_RELPATH
    raw = _read_csv(path, "QM8")
    header = [str(name) for name in raw.iloc[0].tolist()]
    body = raw.iloc[1:]
    first: dict[str, int] = {}
    for position, name in enumerate(header):
        if name not in first:
            first[name] = position
            continue
        original = body.iloc[:, first[name]]
        copy = body.iloc[:, position]
        # Compared as the file's text: identical text is identical values (blank cells
        # included), and no two different strings can pass as one number.
        differs = (original.isna() != copy.isna()) | (original.notna() & (original != copy))
        if bool(differs.any()):
            row = int(np.argmax(differs.to_numpy()))
            raise DataError(
                f"{path}: column {name!r} appears twice with different values (line "
                f"{row + 2}: {original.iloc[row]!r} vs {copy.iloc[row]!r}); expected an "
                "exact copy"
            )
    if list(first) != [SMILES, *QM8_TASKS]:
        raise DataError(f"{path}: expected the columns smiles,{','.join(QM8_TASKS)}")
    distinct = body.iloc[:, list(first.values())].set_axis(list(first), axis=1)
    targets = _numbers(distinct[list(QM8_TASKS)], path)
    table: pd.DataFrame = pd.concat([distinct[[SMILES]], targets], axis=1)
    table = table.reset_index(drop=True)
    return table


def load_tox21(root: Path, n_bits: int = DEFAULT_BITS, radius: int = MORGAN_RADIUS) -> pd.DataFrame:
    """Tox21 under ``root`` with RDKit features.

    Returns:
        ``smiles``, the 12 assay labels (Int64 0/1, ``<NA>`` where untested), the
        :data:`DESCRIPTORS` and ``n_bits`` fingerprint columns; one row per molecule RDKit can
        parse (the others are dropped with a warning and listed in
        ``frame.attrs["dropped_smiles"]``).

    Raises:
        DataError: if RDKit is missing or the file is not the Tox21 CSV.
    """
    table = read_tox21(root)
    return _with_features(table, root / TOX21_RELPATH, n_bits, radius, TOX21_TASKS)


def load_qm8(root: Path, n_bits: int = DEFAULT_BITS, radius: int = MORGAN_RADIUS) -> pd.DataFrame:
    """QM8 under ``root`` with RDKit features; the repeated PBE0 columns verified and dropped.

    Returns:
        ``smiles``, the 12 targets of :data:`QM8_TASKS` (float64), the :data:`DESCRIPTORS` and
        ``n_bits`` fingerprint columns; rows RDKit cannot parse are dropped with a warning.

    Raises:
        DataError: if RDKit is missing or the file is not the QM8 CSV.
    """
    table = read_qm8(root)
    return _with_features(table, root / QM8_RELPATH, n_bits, radius, QM8_TASKS)
