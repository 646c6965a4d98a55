"""The data profile of a training split: what a person looks at before modelling, logged with every run.

Per column: the kind the model will give it (the training rule, ``pyfunc.cleaning.infer_feature_schema``),
the share of missing cells, the number of distinct values, quantiles or the top categories, and its
association with the target (Cramér's V; a number column binned into deciles first, so that every kind
is measured alike and the values compare); and the target's balance. As JSON, and as one self-contained
HTML page (inline SVG charts, no script, no network) that the MLflow UI shows as an artifact.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
import pandas as pd

from pyfunc.cleaning import clean_raw_frame, infer_feature_schema

TOP_CATEGORIES = 8
HISTOGRAM_BINS = 20
ASSOCIATION_BINS = 10
MISSING_LABEL = "(missing)"


def cramers_v(values: pd.Series | np.ndarray, target: pd.Series) -> float:
    """Cramér's V of two categorical series (0: independent, 1: one determines the other)."""
    rows, row_levels = pd.factorize(values)
    columns, column_levels = pd.factorize(target)
    known = (rows >= 0) & (columns >= 0)
    table = np.bincount(rows[known] * len(column_levels) + columns[known],
                        minlength=len(row_levels) * len(column_levels)).reshape(len(row_levels), -1).astype(float)
    if min(table.shape) < 2:
        return 0.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return math.sqrt(chi2 / (table.sum() * (min(table.shape) - 1)))


def binned(values: pd.Series) -> np.ndarray:
    """A number column as its deciles (missing: -1, a category of its own), for :func:`cramers_v`."""
    if values.nunique() <= ASSOCIATION_BINS:
        codes = pd.factorize(values)[0]  # a few distinct values: each its own bin (missing is -1)
    else:
        codes = pd.qcut(values, ASSOCIATION_BINS, labels=False, duplicates="drop").fillna(-1).to_numpy()
    return np.asarray(codes, dtype=np.int64)


def column_profile(name: str, kind: str, cleaned: pd.Series, target: pd.Series) -> dict[str, Any]:
    missing = cleaned.isna()
    profile: dict[str, Any] = {"column": name, "kind": kind, "missing_share": float(missing.mean()),
                               "distinct": int(cleaned.nunique(dropna=True))}
    if kind == "number":
        known = cleaned.dropna().to_numpy(dtype=float)
        if len(known):
            quantiles = np.quantile(known, [0, 0.25, 0.5, 0.75, 1])
            profile["summary"] = {"min": quantiles[0], "p25": quantiles[1], "median": quantiles[2],
                                  "p75": quantiles[3], "max": quantiles[4], "mean": float(known.mean())}
            counts, edges = np.histogram(known, bins=HISTOGRAM_BINS)
            profile["histogram"] = {"counts": counts.tolist(), "edges": edges.tolist()}
        association = cramers_v(binned(cleaned), target)
    else:
        text = cleaned.astype(object).where(~missing, MISSING_LABEL)
        top = text[~missing].value_counts().head(TOP_CATEGORIES)
        profile["top_categories"] = {str(k): int(v) for k, v in top.items()}
        association = cramers_v(text, target)
    profile["association"] = association
    return profile


# A category column whose cells are numbers but for at most this many distinct text values, in at most
# this share of its known cells: those values are most likely missing-value markers nobody declared
SUSPECT_TOKENS = 5
SUSPECT_SHARE = 0.1


def suspect_markers(cleaned: pd.DataFrame, categorical: list[str]) -> dict[str, list[str]]:
    """Per category column that is numbers except for a few text values: those values, most frequent first.

    Declared in ``na_values`` they would be missing, and the column a number column; undeclared, they turn
    every number of it into a category of its own."""
    found = {}
    for name in categorical:
        counts = cleaned[name].value_counts()  # known cells by distinct value, most frequent first
        if counts.empty:
            continue
        # each distinct value read as a number once, not each cell
        text = pd.to_numeric(pd.Series(counts.index.astype(str)), errors="coerce").isna().to_numpy()
        tokens = counts[text]
        if 0 < len(tokens) <= SUSPECT_TOKENS and tokens.sum() <= SUSPECT_SHARE * counts.sum():
            found[name] = [str(token) for token in tokens.index]
    return found


def data_profile(train: pd.DataFrame, target: str, features: list[str], na_values: list[str]) -> dict[str, Any]:
    """The profile of the (raw, missing-normalised) training split; columns by association, strongest first."""
    schema = infer_feature_schema(train[features], na_values)
    cleaned = clean_raw_frame(train, schema) if schema.columns else pd.DataFrame(index=train.index)
    labels = train[target].astype(str)
    columns = [column_profile(c, "number" if c in schema.numeric else "category", cleaned[c], labels)
               for c in schema.columns]
    empty = [c for c in features if c not in schema.columns]  # every cell missing: the model ignores them
    counts = labels.value_counts()
    return {
        "rows": len(train),
        "target": target,
        "target_balance": {str(k): {"rows": int(v), "share": float(v / len(train))} for k, v in counts.items()},
        "columns": sorted(columns, key=lambda c: c["association"], reverse=True),
        "empty_columns": empty,
        "suspect_missing_markers": suspect_markers(cleaned, schema.categorical),
        "association_measure": "Cramér's V with the target (number columns binned into deciles)",
    }


# --- HTML ---------------------------------------------------------------------------------------

def _bars_svg(labels: list[str], values: list[float], width: int = 220, row: int = 14) -> str:
    top = max(values) if values and max(values) > 0 else 1
    parts = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        length = 110 * value / top
        y = i * row
        parts.append(f'<text x="0" y="{y + 10}" font-size="10">{html.escape(label[:18])}</text>'
                     f'<rect x="105" y="{y + 2}" width="{length:.1f}" height="{row - 4}" fill="#4c78a8"/>'
                     f'<text x="{110 + length:.1f}" y="{y + 10}" font-size="9">{value:,.0f}</text>')
    return f'<svg width="{width + 40}" height="{len(labels) * row}">{"".join(parts)}</svg>'


def _histogram_svg(counts: list[int], width: int = 220, height: int = 60) -> str:
    top = max(counts) if counts and max(counts) > 0 else 1
    step = width / max(1, len(counts))
    bars = "".join(f'<rect x="{i * step:.1f}" y="{height - height * c / top:.1f}" width="{step - 1:.1f}" '
                   f'height="{height * c / top:.1f}" fill="#4c78a8"/>' for i, c in enumerate(counts))
    return f'<svg width="{width}" height="{height}">{bars}</svg>'


def _summary(column: dict[str, Any]) -> str:
    if "summary" in column:
        s = column["summary"]
        return (f"min {s['min']:.4g} · p25 {s['p25']:.4g} · median {s['median']:.4g} · p75 {s['p75']:.4g}"
                f" · max {s['max']:.4g} · mean {s['mean']:.4g}")
    top = column.get("top_categories", {})
    return ", ".join(f"{html.escape(k)} ({v:,})" for k, v in list(top.items())[:4])


def profile_html(profile: dict[str, Any]) -> str:
    balance = profile["target_balance"]
    rows = []
    for c in profile["columns"]:
        if "histogram" in c:
            chart = _histogram_svg(c["histogram"]["counts"])
        elif c.get("top_categories"):
            chart = _bars_svg(list(c["top_categories"]), [float(v) for v in c["top_categories"].values()])
        else:
            chart = ""
        rows.append(f"<tr><td><b>{html.escape(c['column'])}</b><br><small>{c['kind']}</small></td>"
                    f"<td>{c['missing_share']:.1%}</td><td>{c['distinct']:,}</td><td>{c['association']:.3f}</td>"
                    f"<td>{_summary(c)}</td><td>{chart}</td></tr>")
    empty = (f"<p>Empty columns (every cell missing; the model ignores them): "
             f"{html.escape(', '.join(profile['empty_columns']))}</p>" if profile["empty_columns"] else "")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Data profile: {html.escape(profile['target'])}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}}</style></head>
<body><h1>Data profile of the training split</h1>
<p>{profile['rows']:,} rows; target <b>{html.escape(profile['target'])}</b>.
Columns by their association with the target ({html.escape(profile['association_measure'])}).</p>
<h2>Target balance</h2>
{_bars_svg(list(balance), [float(v['rows']) for v in balance.values()], width=320)}
<p>{", ".join(f"{html.escape(k)}: {v['share']:.1%}" for k, v in balance.items())}</p>
<h2>Columns</h2>{empty}
<table><tr><th>column</th><th>missing</th><th>distinct</th><th>association</th><th>summary</th><th>distribution</th></tr>
{"".join(rows)}
</table></body></html>
"""
