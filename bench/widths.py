"""Tables of other widths for the benchmark, made from the project's census sample, and models trained on them
with ``mlflow run`` as a user would.

- 14 columns: the census columns that match the classic "adult" table's 14 attributes (age, class of worker,
  education, marital status, occupation, relationship, race, sex, capital gains and losses, hours as weeks
  worked, country, with wage and dividends in place of fnlwgt and education-num);
- 41: the project's own rows;
- 200: the census columns and 159 more, generated from a fixed seed (numbers, some missing, and
  categories of a few to a few dozen values), as wide user tables often are.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from contract.settings import PROJECT_DIR

LABEL = "income"
NARROW = ["age", "class_of_worker", "education", "marital_stat", "major_occupation_code",
          "detailed_household_summary_in_household", "race", "sex", "capital_gains", "capital_losses",
          "weeks_worked_in_year", "country_of_birth_self", "wage_per_hour", "dividends_from_stocks"]
WIDE = 200


def narrow_table(census: pd.DataFrame) -> pd.DataFrame:
    return census[[*NARROW, LABEL]]


def wide_table(census: pd.DataFrame, width: int = WIDE, seed: int = 0) -> pd.DataFrame:
    """``census`` (text cells, as read) with generated columns up to ``width`` features, the label last."""
    rng = np.random.default_rng(seed)
    features = census.drop(columns=[LABEL])
    extra = {}
    for index in range(width - features.shape[1]):
        if index % 4 == 3:  # a quarter categorical: 3 to 40 values
            levels = np.array([f"c{index}_{k}" for k in range(int(rng.integers(3, 41)))])
            extra[f"cat_{index:03d}"] = rng.choice(levels, len(census))
        else:
            values = np.round(rng.normal(0, 1, len(census)), 4).astype(str)
            values[rng.random(len(census)) < 0.02] = "?"  # the project's default missing marker
            extra[f"num_{index:03d}"] = values
    return pd.concat([features.reset_index(drop=True), pd.DataFrame(extra), census[[LABEL]].reset_index(drop=True)],
                     axis=1)


def train(mlflow_bin: Path, env: dict[str, str], table: pd.DataFrame, name: str, root: Path) -> None:
    """``mlflow run .`` on ``table`` (written as CSV under ``root``), registering ``name`` version 1."""
    data = root / f"{name}.csv"
    table.to_csv(data, index=False)
    with (root / f"train-{name}.log").open("wb") as out:
        subprocess.run([str(mlflow_bin), "run", str(PROJECT_DIR), "--env-manager", "local", "--experiment-name",
                        "bench", "-P", f"model_name={name}", "-P", f"data_path={data}"],
                       cwd=PROJECT_DIR, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
