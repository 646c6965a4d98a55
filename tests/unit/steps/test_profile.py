"""The data profile the preprocess step logs (steps/profile.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pyfunc.cleaning import normalize_missing
from steps.profile import cramers_v, data_profile, profile_html
from tests.conftest import mixed_frame

FEATURES = ["age", "hours", "colour", "city", "copy", "noise", "empty"]


@pytest.fixture(scope="module")
def profiled():
    frame = mixed_frame(n=600, seed=3)
    rng = np.random.default_rng(0)
    frame["copy"] = frame["label"].map({"no": "n", "yes": "y"})  # the target under another name
    frame["noise"] = rng.normal(size=len(frame)).round(3).astype(str)  # independent of it
    frame["empty"] = "?"
    return frame, data_profile(normalize_missing(frame, ["?"]), "label", FEATURES, ["?"])


def test_each_column_gets_its_kind_missing_share_distribution_and_association(profiled):
    frame, profile = profiled
    columns = {c["column"]: c for c in profile["columns"]}
    assert set(columns) == set(FEATURES) - {"empty"} and profile["empty_columns"] == ["empty"]
    assert columns["age"]["kind"] == "number" and columns["colour"]["kind"] == "category"
    assert columns["hours"]["missing_share"] == pytest.approx((frame["hours"] == "?").mean())
    assert columns["age"]["summary"]["max"] == frame["age"].astype(float).max()
    assert sum(columns["age"]["histogram"]["counts"]) == len(frame)
    assert set(columns["colour"]["top_categories"]) == {"red", "green", "blue"}
    assert columns["copy"]["association"] == pytest.approx(1.0)
    assert columns["noise"]["association"] < 0.2 < columns["colour"]["association"]
    assert profile["columns"][0]["column"] == "copy"  # strongest first
    shares = {k: v["share"] for k, v in profile["target_balance"].items()}
    assert shares == pytest.approx(frame["label"].value_counts(normalize=True).to_dict())


def test_cramers_v_is_zero_for_independent_and_one_for_determined_columns():
    target = pd.Series(["a", "b"] * 50)
    assert cramers_v(pd.Series(["x"] * 50 + ["y"] * 50), target) == pytest.approx(0.0)
    assert cramers_v(target.map({"a": 1, "b": 2}), target) == pytest.approx(1.0)


def test_the_page_is_self_contained_and_shows_every_column(profiled):
    _, profile = profiled
    page = profile_html(profile)
    assert page.startswith("<!doctype html>") and page.count("<svg") >= len(profile["columns"])
    for column in profile["columns"]:
        assert f"<b>{column['column']}</b>" in page
    assert "<script" not in page and "src=" not in page and "http" not in page  # opens offline, as an artifact


def test_a_number_column_with_a_few_undeclared_markers_is_named_with_them():
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({
        "income": rng.integers(1000, 9000, 400).astype(str),  # numbers, with "n.a." and "-" for missing
        "plan": rng.choice(["gold", "silver", "basic"], 400),  # a real category
        "code": rng.choice(["A1", "17", "B2", "9"], 400),  # half numbers: a category, not a marker problem
        "label": rng.choice(["yes", "no"], 400),
    })
    frame.loc[:9, "income"] = "n.a."
    frame.loc[10:12, "income"] = "-"
    profile = data_profile(normalize_missing(frame, ["?"]), "label", ["income", "plan", "code"], ["?"])
    assert profile["suspect_missing_markers"] == {"income": ["n.a.", "-"]}
    # declared, they are missing and the column is a number column
    declared = data_profile(normalize_missing(frame, ["?", "n.a.", "-"]), "label", ["income", "plan", "code"],
                            ["?", "n.a.", "-"])
    assert declared["suspect_missing_markers"] == {}
    assert {c["column"]: c["kind"] for c in declared["columns"]}["income"] == "number"
