"""Fairness by group over a model's sensitive columns (``sensitive_columns``), with fairlearn's ``MetricFrame``: the
one implementation the train step (a table, a figure and two metrics of the test split), the promotion rule (a guard)
and the monitor step (from feedback) use.

A group is a combination of the sensitive columns' values, cleaned as the model cleans its inputs; a missing value
is the group ``missing``. A numeric column with more than ``MAX_LEVELS`` distinct values in the version's training
rows is cut at their quartiles, so that training, promotion and monitoring share one set of groups whatever rows
they look at. Binary targets get, per group, the selection rate (the share of rows answered the positive class),
accuracy, and the true and false positive rates of the positive class; and fairlearn's two differences, the largest
gap between two groups: of selection rate (``demographic_parity_difference``), of true or of false positive rate
(``equalized_odds_difference``, whichever gap is larger). As in fairlearn, a group without positive (negative) rows
has a true (false) positive rate of 0; the table counts each group's positives so that a reader sees it. Multiclass
targets get per-group accuracy only: both differences are defined for one positive class.

Column names and values are data: they are cells of the table and the JSON, never file names or metric keys.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, count, false_positive_rate, selection_rate, true_positive_rate
from sklearn.metrics import accuracy_score

from contract.errors import ParameterError
from contract.names import TAG_MONITORING_DEMOGRAPHIC_PARITY, TAG_MONITORING_EQUALIZED_ODDS
from contract.params import FAIRNESS_METRICS, ModelParams, closest
from contract.tables import line_of_names
from pyfunc.cleaning import FeatureSchema, clean_raw_frame

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402

DEMOGRAPHIC_PARITY, EQUALIZED_ODDS = FAIRNESS_METRICS
MISSING_GROUP = "missing"
MAX_LEVELS = 10  # a numeric column with more distinct values than this is cut at its quartiles
QUARTILES = (0.25, 0.5, 0.75)
TABLE_NAME = "fairness_by_group"  # .csv, .json (the whole table) and .png (the largest groups)
FIGURE_GROUPS = 30
SUMMARY_GROUPS = 100  # the largest groups monitoring's summary lists; its table artifact holds them all
LISTED_COLUMNS = 20  # input columns an error about an unknown sensitive column lists
BINARY_RATES = ("selection_rate", "accuracy", "true_positive_rate", "false_positive_rate")
LIVE_PREFIX = "live_"  # the monitor run's metrics: live_demographic_parity_difference, ...


def check_columns(sensitive: Sequence[str], columns: Sequence[str]) -> None:
    """Every sensitive column must be an input column of the model: else one line naming ``sensitive_columns``,
    the closest input column to each unknown name, and the input columns."""
    unknown = [c for c in sensitive if c not in columns]
    if not unknown:
        return
    hints = []
    for name in unknown:
        guess = closest(name, list(columns))
        hints.append(f"{name!r} (did you mean {guess!r}?)" if guess else repr(name))
    shown = ", ".join(repr(c) for c in columns[:LISTED_COLUMNS]) + (", ..." if len(columns) > LISTED_COLUMNS else "")
    raise ParameterError("sensitive_columns", line_of_names(sensitive),
                         f"not an input column of the model: {', '.join(hints)}; its input columns: {shown}")


def check_params(model: ModelParams, columns: Sequence[str], positive: object | None) -> None:
    """What fails before a model is fitted: an unknown sensitive column, a fairness guard on a multiclass target."""
    check_columns(model.sensitive_columns, columns)
    guards = [m for m in model.guard_metrics if m in FAIRNESS_METRICS]
    if guards and positive is None:
        raise ParameterError("guard_metrics", line_of_names(model.guard_metrics),
                             f"{', '.join(guards)}: defined for binary targets (one positive class); this target "
                             "has more classes")


@dataclass(frozen=True)
class Grouping:
    """How rows fall into groups: the sensitive columns, the model's cleaning of them, and where the numeric ones
    with many values are cut (edges from the version's training rows)."""

    columns: tuple[str, ...]
    schema: FeatureSchema  # the sensitive columns' part of the model's schema
    edges: dict[str, tuple[float, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, sensitive: Sequence[str], schema: FeatureSchema, reference: pd.DataFrame) -> Grouping:
        check_columns(sensitive, schema.columns)
        columns = tuple(dict.fromkeys(sensitive))
        own = FeatureSchema([c for c in schema.numeric if c in columns],
                            [c for c in schema.categorical if c in columns], list(schema.na_values))
        clean = _cleaned(reference, own)
        edges = {}
        for column in own.numeric:
            values = clean[column].to_numpy(dtype=float)
            values = values[~np.isnan(values)]
            if len(np.unique(values)) > MAX_LEVELS:
                edges[column] = tuple(float(e) for e in np.unique(np.quantile(values, QUARTILES)))
        return cls(columns, own, edges)

    def labels(self, rows: pd.DataFrame) -> list[tuple[str, ...]]:
        """Each row's group: a label a sensitive column."""
        clean = _cleaned(rows, self.schema)
        by_column = [self._column_labels(column, clean[column].to_numpy(dtype=object)) for column in self.columns]
        return list(zip(*by_column, strict=True)) if by_column else [() for _ in range(len(rows))]

    def _column_labels(self, column: str, values: np.ndarray) -> list[str]:
        edges = self.edges.get(column)
        return [MISSING_GROUP if _is_missing(v) else _bin(float(v), edges) if edges is not None else _text(v)
                for v in values]


def _cleaned(rows: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    # a column the rows do not hold is missing in every row (a live request may leave it out)
    return clean_raw_frame(rows.reindex(columns=schema.columns), schema)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 40.0 read as a number is the group "40", as written
    return str(value)


def _bin(value: float, edges: tuple[float, ...]) -> str:
    at = int(np.searchsorted(edges, value, side="right"))
    if at == 0:
        return f"< {_text(edges[0])}"
    if at == len(edges):
        return f">= {_text(edges[-1])}"
    return f"[{_text(edges[at - 1])}, {_text(edges[at])})"


@dataclass(frozen=True)
class Report:
    """The table by group (largest group first) and, for a binary target, the two differences."""

    columns: tuple[str, ...]
    by_group: list[dict[str, Any]]
    differences: dict[str, float]

    def section(self, limit: int | None = None) -> dict[str, Any]:
        """As the monitor step's ``summary["fairness"]``, and the JSON artifact (all groups)."""
        shown = self.by_group if limit is None else self.by_group[:limit]
        return {"sensitive_columns": list(self.columns), "groups": len(self.by_group), "by_group": shown,
                **self.differences}

    def table(self) -> pd.DataFrame:
        """One row a group: a column a sensitive column (its name as given), then the figures."""
        groups = pd.DataFrame([[g["group"][c] for c in self.columns] for g in self.by_group],
                              columns=list(self.columns))
        figures = pd.DataFrame([{k: v for k, v in g.items() if k != "group"} for g in self.by_group])
        return pd.concat([groups, figures], axis=1)  # a column named as a figure stays a column of its own


def report(rows: pd.DataFrame, y_true: Sequence[Any], y_pred: Sequence[Any], positive: object | None,
           grouping: Grouping) -> Report:
    """Per-group figures of the answers ``y_pred`` against the true labels, over ``rows``' groups. Labels are
    compared as text (a logged label 1 may come back as "1"); ``positive`` None: a multiclass target."""
    truth = np.array([str(v) for v in y_true], dtype=object)
    answered = np.array([str(v) for v in y_pred], dtype=object)
    keys = grouping.labels(rows)
    if not len(keys):
        return Report(grouping.columns, [], {})
    codes, groups = pd.factorize(pd.Series(keys, dtype=object))
    features = pd.Series(codes, name="group")  # user values never reach fairlearn's names
    if positive is None:
        frame = MetricFrame(metrics={"accuracy": accuracy_score, "rows": count}, y_true=truth, y_pred=answered,
                            sensitive_features=features)
        differences: dict[str, float] = {}
    else:
        is_positive, said_positive = (truth == str(positive)).astype(int), (answered == str(positive)).astype(int)
        frame = MetricFrame(metrics={"selection_rate": selection_rate, "accuracy": accuracy_score,
                                     "true_positive_rate": true_positive_rate,
                                     "false_positive_rate": false_positive_rate, "rows": count,
                                     "positives": _positives},
                            y_true=is_positive, y_pred=said_positive, sensitive_features=features)
        differences = compared_differences(frame.by_group)
    by_group = []
    for code, figures in frame.by_group.iterrows():
        entry: dict[str, Any] = {"group": dict(zip(grouping.columns, groups[int(code)], strict=True))}
        for name, value in figures.items():
            entry[str(name)] = int(value) if name in ("rows", "positives") else _number(value)
        by_group.append(entry)
    by_group.sort(key=lambda g: -g["rows"])
    return Report(grouping.columns, by_group, differences)


# A group smaller than this is listed with its figures but left out of the differences: one or two rows give
# rates of 0 or 1 by chance, and the largest gap over every group would be theirs. A rate of a group without the
# rows it divides by (a true positive rate without positives) is left out the same way.
MIN_GROUP_ROWS = 20


def compared_differences(by_group: pd.DataFrame) -> dict[str, float]:
    """Demographic parity and equalized odds differences (fairlearn's: the largest gap between groups) over the
    groups of at least ``MIN_GROUP_ROWS`` rows; none when fewer than two such groups have the rates."""
    big = by_group[by_group["rows"] >= MIN_GROUP_ROWS]
    with_positives, with_negatives = big[big["positives"] > 0], big[big["rows"] > big["positives"]]
    if len(big) < 2:
        return {}

    def gap(groups: pd.DataFrame, rate: str) -> float:
        return float(groups[rate].max() - groups[rate].min()) if len(groups) >= 2 else 0.0

    return {DEMOGRAPHIC_PARITY: gap(big, "selection_rate"),
            EQUALIZED_ODDS: max(gap(with_positives, "true_positive_rate"), gap(with_negatives, "false_positive_rate"))}


def _positives(y_true: np.ndarray, y_pred: np.ndarray) -> int:
    return int(np.sum(y_true))


def _number(value: Any) -> float | None:
    number = float(value)
    return None if math.isnan(number) else number  # JSON has no NaN


def write(result: Report, out_dir: Path, figure: bool = True) -> None:
    """``fairness_by_group.csv`` and ``.json`` (every group), and the figure of the largest groups."""
    result.table().to_csv(out_dir / f"{TABLE_NAME}.csv", index=False)
    (out_dir / f"{TABLE_NAME}.json").write_text(json.dumps(result.section(), indent=1, ensure_ascii=False),
                                                encoding="utf-8")
    if figure and result.by_group:
        plot(result, out_dir / f"{TABLE_NAME}.png")


def plot(result: Report, path: Path) -> None:
    """Each figure of the largest groups, one bar a group."""
    shown = result.by_group[:FIGURE_GROUPS]
    rates = [r for r in BINARY_RATES if r in shown[0]]
    names = [", ".join(f"{c}={g['group'][c]}" for c in result.columns) + f" ({g['rows']})" for g in shown]
    fig, axes = plt.subplots(1, len(rates), figsize=(3.2 * len(rates) + 3, 0.3 * len(shown) + 1.8), sharey=True,
                             squeeze=False)
    for ax, rate in zip(axes[0], rates, strict=True):
        values = [np.nan if g[rate] is None else g[rate] for g in shown]
        ax.barh(range(len(shown)), values)
        ax.set_xlim(0, 1)
        ax.set_title(rate.replace("_", " "))
    # user text: never mathtext (a `$` in a name or a value)
    axes[0][0].set_yticks(range(len(shown)), [n if len(n) <= 60 else n[:57] + "..." for n in names],
                          parse_math=False)
    axes[0][0].invert_yaxis()
    gaps = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in result.differences.items())
    fig.suptitle("By group of " + ", ".join(result.columns) + " (test split; rows in brackets)"
                 + (f"\n{gaps}" if gaps else ""), parse_math=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def training_report(test: pd.DataFrame, y_true: Sequence[Any], y_pred: Sequence[Any], classes: Sequence[Any],
                    positive: object | None, sensitive: tuple[str, ...], out_dir: Path, *, schema: FeatureSchema,
                    reference: pd.DataFrame) -> dict[str, float]:
    """The train step's report on the test split: writes the table and figure into ``out_dir`` and returns the
    two differences as metrics (none for a multiclass target, nothing at all without sensitive columns).
    ``reference``: the training split (where numeric columns are cut)."""
    if not sensitive:
        return {}
    result = report(test, y_true, y_pred, positive if len(classes) == 2 else None,
                    Grouping.of(sensitive, schema, reference))
    write(result, out_dir)
    return result.differences


def window_report(inputs: pd.DataFrame, y_true: Sequence[Any], y_pred: Sequence[Any], positive: object | None,
                  sensitive: Sequence[str], schema: FeatureSchema, reference: pd.DataFrame, minimum: int,
                  out_dir: Path) -> dict[str, Any]:
    """The monitor step's ``summary["fairness"]`` from the labelled rows of a window (their inputs, true labels
    and the labels served): empty without sensitive columns or with fewer than ``minimum`` rows; the whole table
    goes to ``out_dir``."""
    if not sensitive or len(inputs) < minimum:
        return {}
    result = report(inputs, y_true, y_pred, positive, Grouping.of(sensitive, schema, reference))
    write(result, out_dir, figure=False)
    return result.section(SUMMARY_GROUPS)


def run_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The monitor run's live differences (where the window has them)."""
    section = summary.get("fairness") or {}
    return {LIVE_PREFIX + name: section[name] for name in FAIRNESS_METRICS if section.get(name) is not None}


def version_tags(summary: dict[str, Any]) -> dict[str, str]:
    section = summary.get("fairness") or {}
    tags = {TAG_MONITORING_DEMOGRAPHIC_PARITY: section.get(DEMOGRAPHIC_PARITY),
            TAG_MONITORING_EQUALIZED_ODDS: section.get(EQUALIZED_ODDS)}
    return {tag: f"{value:.6f}" for tag, value in tags.items() if value is not None}
