"""Drift of one column between a reference sample and a current one, with Evidently's default methods.

Evidently (0.7) does not import with pandas 3, so its defaults are implemented
here with scipy, one method a case, named in every result:

- numbers: the two-sample Kolmogorov-Smirnov test when either sample has at
  most ``small_sample`` values (drift when p < ``p_value``), otherwise the
  Wasserstein distance divided by the reference's standard deviation (at least
  0.001, as Evidently does; drift when above ``distance``);
- categories: the chi-squared test of homogeneity of the two samples' counts
  when either sample is small (drift when p < ``p_value``), otherwise the
  Jensen-Shannon distance of their shares (natural log, as scipy and Evidently
  compute it; drift when above ``distance``).

Missing values take no part in a test; their share is reported beside it, as
is the share of current categories the reference never had.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance


@dataclass(frozen=True)
class Rules:
    p_value: float = 0.05
    distance: float = 0.1
    small_sample: int = 1000


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: str  # number or category
    method: str  # ks, wasserstein, chi2, jensenshannon; none when a sample has no value
    score: float  # the p-value (tests) or the distance
    threshold: float
    drifted: bool
    reference_values: int
    current_values: int
    reference_missing: float  # share of missing cells
    current_missing: float
    unseen: float | None  # share of current values the reference never had (categories)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def missing_share(values: np.ndarray, missing: np.ndarray) -> float:
    return float(missing.mean()) if len(values) else 0.0


def numeric_drift(column: str, reference: np.ndarray, current: np.ndarray, rules: Rules) -> ColumnDrift:
    """``reference`` and ``current``: float arrays, NaN for missing."""
    ref_missing, cur_missing = np.isnan(reference), np.isnan(current)
    ref, cur = reference[~ref_missing], current[~cur_missing]
    shares = (missing_share(reference, ref_missing), missing_share(current, cur_missing))
    if not len(ref) or not len(cur):
        return ColumnDrift(column, "number", "none", math.nan, math.nan, False, len(ref), len(cur), *shares, None)
    if min(len(ref), len(cur)) <= rules.small_sample:
        p = float(ks_2samp(ref, cur).pvalue)
        return ColumnDrift(column, "number", "ks", p, rules.p_value, p < rules.p_value, len(ref), len(cur), *shares,
                           None)
    distance = float(wasserstein_distance(ref, cur) / max(float(np.std(ref)), 0.001))
    return ColumnDrift(column, "number", "wasserstein", distance, rules.distance, distance > rules.distance,
                       len(ref), len(cur), *shares, None)


def category_counts(reference: list[str], current: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    categories = sorted(set(reference) | set(current))
    index = {c: i for i, c in enumerate(categories)}
    ref = np.bincount([index[v] for v in reference], minlength=len(categories)).astype(float)
    cur = np.bincount([index[v] for v in current], minlength=len(categories)).astype(float)
    return categories, ref, cur


def categorical_drift(column: str, reference: list[Any], current: list[Any], rules: Rules) -> ColumnDrift:
    """``reference`` and ``current``: cleaned categories, None for missing."""
    ref = [v for v in reference if v is not None]
    cur = [v for v in current if v is not None]
    shares = (1 - len(ref) / len(reference) if reference else 0.0, 1 - len(cur) / len(current) if current else 0.0)
    if not ref or not cur:
        return ColumnDrift(column, "category", "none", math.nan, math.nan, False, len(ref), len(cur), *shares, None)
    known = set(ref)
    unseen = sum(v not in known for v in cur) / len(cur)
    categories, ref_counts, cur_counts = category_counts(ref, cur)
    if min(len(ref), len(cur)) <= rules.small_sample:
        if len(categories) < 2:
            p = 1.0  # one category in both: nothing to tell apart
        else:
            p = float(chi2_contingency(np.vstack([ref_counts, cur_counts])).pvalue)
        return ColumnDrift(column, "category", "chi2", p, rules.p_value, p < rules.p_value, len(ref), len(cur),
                           *shares, unseen)
    distance = float(jensenshannon(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()))
    return ColumnDrift(column, "category", "jensenshannon", distance, rules.distance, distance > rules.distance,
                       len(ref), len(cur), *shares, unseen)
