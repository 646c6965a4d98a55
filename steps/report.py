"""The monitoring report: figures of drifted columns and one self-contained HTML page.

Column names and categories are the user's text: never parsed as mathtext (a ``$`` in a name), escaped in HTML.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from steps.drift import ColumnDrift  # noqa: E402

TOP_CATEGORIES = 15


def numeric_figure(column: str, reference: np.ndarray, current: np.ndarray) -> bytes:
    ref, cur = reference[~np.isnan(reference)], current[~np.isnan(current)]
    edges = np.histogram_bin_edges(np.r_[ref, cur], bins=30)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(ref, bins=edges, density=True, alpha=0.55, label=f"reference (training, {len(ref)})")
    ax.hist(cur, bins=edges, density=True, alpha=0.55, label=f"current (logged, {len(cur)})")
    ax.set_title(column, parse_math=False)
    ax.legend()
    return _png(fig)


def categorical_figure(column: str, reference: list[Any], current: list[Any]) -> bytes:
    ref = [v for v in reference if v is not None]
    cur = [v for v in current if v is not None]
    counts: dict[Any, list[float]] = {}
    for i, values in enumerate((ref, cur)):
        for value in values:
            counts.setdefault(value, [0.0, 0.0])[i] += 1
    shown = sorted(counts, key=lambda c: -(counts[c][0] / max(len(ref), 1) + counts[c][1] / max(len(cur), 1)))
    shown = shown[:TOP_CATEGORIES]
    x = np.arange(len(shown))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.bar(x - 0.2, [counts[c][0] / max(len(ref), 1) for c in shown], 0.4, label="reference (training)")
    ax.bar(x + 0.2, [counts[c][1] / max(len(cur), 1) for c in shown], 0.4, label="current (logged)")
    ax.set_xticks(x, [str(c)[:18] for c in shown], rotation=45, ha="right", parse_math=False)
    ax.set_ylabel("share")
    ax.set_title(column, parse_math=False)
    ax.legend()
    return _png(fig)


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_text(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _text(value: Any) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def html_report(summary: dict[str, Any], columns: list[ColumnDrift], prediction: ColumnDrift | None,
                live: dict[str, float], test: dict[str, float], figures: dict[str, bytes]) -> str:
    """One page a person opens from the MLflow UI: what was compared, what drifted, the live quality."""
    head = _table(["", ""], [[k, v] for k, v in summary.items() if not isinstance(v, (list, dict))])
    drift = _table(["column", "kind", "method", "score", "threshold", "drifted", "missing (ref)", "missing (now)",
                    "unseen"],
                   [[c.column, c.kind, c.method, c.score, c.threshold, "yes" if c.drifted else "",
                     c.reference_missing, c.current_missing, "" if c.unseen is None else c.unseen]
                    for c in sorted(columns, key=lambda c: (not c.drifted, c.column))])
    predicted = "" if prediction is None else _table(
        ["", "method", "score", "threshold", "drifted"],
        [["predicted labels", prediction.method, prediction.score, prediction.threshold,
          "yes" if prediction.drifted else ""]])
    estimated, spread = summary.get("estimated_metrics", {}), summary.get("estimated_uncertainty", {})
    quality = _table(["metric", "estimated (no labels)", "± (std)", "live (feedback)", "test split (training run)"],
                     [[k, estimated.get(k, float("nan")), spread.get(k, float("nan")), live.get(k, float("nan")),
                       test.get(k, float("nan"))] for k in dict.fromkeys([*estimated, *live])])
    if not live:
        quality += "<p>Not enough true labels yet (POST /feedback).</p>"
    if summary.get("probabilities_calibrated") is False:
        quality += "<p>The version's probabilities are not calibrated: the estimates may be off.</p>"
    images = "".join(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,"
                     f"{base64.b64encode(png).decode()}'><figcaption>{html.escape(name)}</figcaption></figure>"
                     for name, png in figures.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Monitoring {html.escape(str(summary.get('model_name')))}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}figure{{display:inline-block;margin:.5em}}</style></head>
<body><h1>Monitoring: {html.escape(str(summary.get('model_name')))} version {html.escape(str(summary.get('version')))}</h1>
{head}<h2>Drift by column</h2>{drift}<h2>Predictions</h2>{predicted}<h2>Live quality</h2>{quality}
<h2>Drifted columns</h2>{_figures_note(columns, figures)}{images or "<p>None.</p>"}</body></html>"""


def _figures_note(columns: list[ColumnDrift], figures: dict[str, bytes]) -> str:
    drifted = sum(c.drifted for c in columns)
    if len(figures) >= drifted:
        return ""
    return f"<p>Figures of the first {len(figures)} of the {drifted} drifted columns; the table above lists all.</p>"
