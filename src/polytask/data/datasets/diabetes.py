"""UCI Diabetes 130-US hospitals for years 1999-2008.

Source: Strack, DeShazo, Gennings, Olmo, Ventura, Cios and Clore, "Impact of HbA1c Measurement
on Hospital Readmission Rates: Analysis of 70,000 Clinical Database Patient Records", BioMed
Research International, vol. 2014, article ID 781670; distributed by the UCI Machine Learning
Repository as ``dataset_diabetes.zip`` (CC BY 4.0).

One row per inpatient encounter of a diabetic patient (101,766 encounters of 71,518 patients).
Two tasks come naturally from it: early readmission (``readmitted == "<30"``, binary) and length
of stay (``time_in_hospital`` in days, regression). Patients recur across encounters, so splits
must be made by ``patient_nbr`` or the same patient leaks between train and test.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd

from polytask.errors import DataError

RELPATH = "diabetes130/dataset_diabetes.zip"
MEMBER = "dataset_diabetes/diabetic_data.csv"
URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/00296/dataset_diabetes.zip"
SHA256 = "3a17a3b55b6dd4a1926703185c0ad8e2ed30bc8e2f9b927cdd1000b733d1de8e"

# Integer-coded identifiers: admission type/discharge/source ids index IDs_mapping.csv and
# diag_1..3 are ICD-9 codes ("250.83", "V57"); both are categories, not quantities.
CODE_COLUMNS: tuple[str, ...] = (
    "admission_type_id",
    "discharge_disposition_id",
    "admission_source_id",
    "diag_1",
    "diag_2",
    "diag_3",
)
INT_COLUMNS: tuple[str, ...] = (
    "encounter_id",
    "patient_nbr",
    "time_in_hospital",
    "num_lab_procedures",
    "num_procedures",
    "num_medications",
    "number_outpatient",
    "number_emergency",
    "number_inpatient",
    "number_diagnoses",
)

TARGETS: dict[str, str] = {"readmitted_30": "binary", "time_in_hospital": "regression"}
GROUP = "patient_nbr"
# encounter_id is a row id, readmitted is the raw source of readmitted_30, and weight is
# missing in about 97% of the rows.
IGNORE: tuple[str, ...] = ("encounter_id", "readmitted", "weight")

SUMMARY = "UCI Diabetes 130-US hospitals: readmission < 30 days and length of stay"
CITATION = (
    "Strack et al. Impact of HbA1c Measurement on Hospital Readmission Rates: Analysis of "
    "70,000 Clinical Database Patient Records. BioMed Research International 2014, 781670. "
    "Data: UCI Machine Learning Repository, Diabetes 130-US hospitals for years 1999-2008 "
    "(CC BY 4.0)."
)


def load_diabetes(root: Path) -> pd.DataFrame:
    """Read ``diabetic_data.csv`` straight out of the zip under ``root`` and derive the targets.

    Returns:
        The 50 source columns (``?`` as missing, code columns as strings, ``time_in_hospital``
        as float64) plus ``readmitted_30`` (int64, 0/1).

    Raises:
        DataError: if the archive is unreadable or lacks the expected member or columns.
    """
    path = root / RELPATH
    # Pinning the dtypes of the code and count columns makes the result independent of pandas'
    # chunked type inference (which otherwise warns about mixed types in payer_code).
    dtypes: dict[str, str] = {name: "str" for name in CODE_COLUMNS}
    dtypes.update({name: "int64" for name in INT_COLUMNS})
    try:
        with zipfile.ZipFile(path) as archive, archive.open(MEMBER) as handle:
            # Only "?" marks missing values: "None" in max_glu_serum/A1Cresult means "test not
            # taken", which is informative, so pandas' default NA strings must stay off.
            frame = pd.read_csv(
                handle,
                na_values=["?"],
                keep_default_na=False,
                dtype=dtypes,
                low_memory=False,
            )
    except KeyError as exc:
        raise DataError(f"{path}: archive has no member {MEMBER}") from exc
    except (zipfile.BadZipFile, ValueError) as exc:
        raise DataError(f"{path}: not the Diabetes 130-US hospitals archive ({exc})") from exc

    missing = [c for c in (*CODE_COLUMNS, *INT_COLUMNS, "readmitted") if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: {MEMBER} lacks column(s) {', '.join(missing)}")

    # Float so that the regression target has the same dtype as every other regression target.
    frame["time_in_hospital"] = frame["time_in_hospital"].astype("float64")
    frame["readmitted_30"] = (frame["readmitted"] == "<30").astype("int64")
    return frame
