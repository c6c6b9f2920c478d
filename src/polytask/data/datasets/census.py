"""UCI Census-Income (KDD): the real-data benchmark of the MMoE paper.

Source: the *Census-Income (KDD)* data set of the UCI Machine Learning Repository (donated by
Terran Lane and Ronny Kohavi, 2000), weighted records from the 1994 and 1995 Current Population
Surveys of the U.S. Census Bureau; licence CC BY 4.0. Only the test file
(``census-income.test``, 99,762 rows) is used here, as described in the shared data README; a
train/validation/test split is made from it by the caller.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018, Section 6.2, pair two binary tasks on this data: income above
$50K and marital status "never married". Those are the two targets derived here.

File format (``census-income.names``): no header, 42 comma-separated columns, every value after
the first preceded by a space, ``?`` for missing. Column 24 is the CPS instance weight, which is
a sampling weight and not a property of the person, so it is ignored as a feature.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from polytask.errors import DataError

RELPATH = "census-income/census-income.test.gz"
URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/census-income-mld/census-income.test.gz"
SHA256 = "5ac4cacd3ca9f1ecb10de1a0a41e4ac68fdc419e3fec190f5c0c6cc03b2ea659"

# The 42 columns in the order of census-income.names (checked against the data: column 7 holds
# the marital statuses, column 24 the fractional instance weights, column 41 the income label).
COLUMNS: tuple[str, ...] = (
    "age",
    "class_of_worker",
    "detailed_industry_recode",
    "detailed_occupation_recode",
    "education",
    "wage_per_hour",
    "enroll_in_edu_inst_last_wk",
    "marital_stat",
    "major_industry_code",
    "major_occupation_code",
    "race",
    "hispanic_origin",
    "sex",
    "member_of_a_labor_union",
    "reason_for_unemployment",
    "full_or_part_time_employment_stat",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "tax_filer_stat",
    "region_of_previous_residence",
    "state_of_previous_residence",
    "detailed_household_and_family_stat",
    "detailed_household_summary_in_household",
    "instance_weight",
    "migration_code_change_in_msa",
    "migration_code_change_in_reg",
    "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt",
    "num_persons_worked_for_employer",
    "family_members_under_18",
    "country_of_birth_father",
    "country_of_birth_mother",
    "country_of_birth_self",
    "citizenship",
    "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits",
    "weeks_worked_in_year",
    "year",
    "income",
)

# Measured quantities; every other column is categorical. The recode columns, the two small
# coded columns and the survey year are written as integers but are labels, not magnitudes, so
# they are read as strings to keep a model from treating industry 45 as "more" than industry 4.
INT_COLUMNS: tuple[str, ...] = (
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "num_persons_worked_for_employer",
    "weeks_worked_in_year",
)
FLOAT_COLUMNS: tuple[str, ...] = ("instance_weight",)

INCOME_LOW = "- 50000."
INCOME_HIGH = "50000+."
NEVER_MARRIED = "Never married"

TARGETS: dict[str, str] = {"income_50k": "binary", "never_married": "binary"}
# The raw label sources would leak the targets; the instance weight is a survey sampling weight.
IGNORE: tuple[str, ...] = ("income", "marital_stat", "instance_weight")

SUMMARY = "UCI Census-Income (KDD) test file: income > 50K and never-married (MMoE pair)"
CITATION = (
    "Ma, Zhao, Yi, Chen, Hong and Chi. Modeling Task Relationships in Multi-task Learning with "
    "Multi-gate Mixture-of-Experts. KDD 2018. Data: Census-Income (KDD), T. Lane and R. Kohavi, "
    "UCI Machine Learning Repository, 2000 (CC BY 4.0)."
)


def load_census(root: Path) -> pd.DataFrame:
    """Read the Census-Income (KDD) test file under ``root`` and derive the two MMoE targets.

    Returns:
        A frame with the 42 source columns (snake_case names, strings stripped, ``?`` as
        missing) followed by ``income_50k`` and ``never_married`` (int64, 0/1).

    Raises:
        DataError: if the file does not have 42 columns or holds an unknown income label.
    """
    path = root / RELPATH
    dtypes: dict[str, str] = {
        name: ("int64" if name in INT_COLUMNS else "float64" if name in FLOAT_COLUMNS else "str")
        for name in COLUMNS
    }
    try:
        # sep="," with skipinitialspace keeps the fast C parser; the file's ", " separator as a
        # two-character sep would force the slow Python engine. keep_default_na=False because
        # only "?" marks missing values (pandas would otherwise also turn "None" etc. into NaN).
        frame = pd.read_csv(
            path,
            header=None,
            names=list(COLUMNS),
            sep=",",
            skipinitialspace=True,
            na_values=["?"],
            keep_default_na=False,
            dtype=dtypes,
            compression="gzip",
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not the 42-column Census-Income (KDD) format ({exc})") from exc

    # skipinitialspace removes the leading blank only; some values also carry a trailing one
    # (e.g. "Foreign born- Not a citizen of U S ").
    for name in COLUMNS:
        if dtypes[name] == "str":
            frame[name] = frame[name].str.strip()

    income = frame["income"]
    unknown = ~income.isin([INCOME_LOW, INCOME_HIGH])
    if unknown.any():
        raise DataError(
            f"{path}: unknown income label {income[unknown].iloc[0]!r} "
            f"(expected {INCOME_LOW!r} or {INCOME_HIGH!r})"
        )
    frame["income_50k"] = (income == INCOME_HIGH).astype("int64")
    frame["never_married"] = (frame["marital_stat"] == NEVER_MARRIED).astype("int64")
    return frame
