"""The header rules (contract/tables.py): names are data, refused only where no path could serve them."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.errors import DataError
from contract.tables import check_column_names, column_name, csv_header, line_of_names, names_of_line

SERVABLE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                   max_size=200).filter(lambda name: column_name(name) != "")


@given(st.lists(SERVABLE, min_size=1, max_size=8, unique_by=column_name))
def test_any_name_but_the_refused_ones_passes(names):
    check_column_names(names)


@pytest.mark.parametrize(("header", "reserved", "expected"), [
    (["age", "", "city"], (), "data_path: column 2 has an empty name"),
    (["age", "   ", "city"], (), "data_path: column 2 has an empty name"),
    (["age", "ci\x00ty"], (), "data_path: column 2 ('ci\\x00ty'): a column name cannot hold a NUL character"),
    (["a/b", "x", " a/b "], (), "data_path: column 3 ('a/b') names the same column as column 1"),
    (['say "hi"', 'say "hi"'], (), "data_path: column 2 ('say \"hi\"') names the same column as column 1"),
    (["age", "proba_yes"], {"proba_yes"},
     "data_path: column 2 ('proba_yes') is named like a column the model's answers add"),
])
def test_a_header_no_model_could_serve_is_refused_in_one_line_naming_the_column_and_the_rule(header, reserved,
                                                                                            expected):
    with pytest.raises(DataError) as refused:
        check_column_names(header, reserved=reserved)
    assert str(refused.value).startswith(expected)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_csv_header_applies_the_rules_and_keeps_odd_names_as_they_are(tmp_path: Path, suffix):
    header = '"debt/income (%)","say ""hi""",a.b:c #1,café,城市,back\\slash\n'
    opener = gzip.open if suffix.endswith(".gz") else open
    path = tmp_path / f"ok{suffix}"
    with opener(path, "wt", encoding="utf-8") as out:
        out.write(header + "1,2,3,4,5,6\n")
    assert csv_header(path) == ["debt/income (%)", 'say "hi"', "a.b:c #1", "café", "城市", "back\\slash"]
    repeated = tmp_path / f"repeated{suffix}"
    with opener(repeated, "wt", encoding="utf-8") as out:
        out.write("a,b, a\n1,2,3\n")
    with pytest.raises(DataError, match=r"column 3 \('a'\) names the same column as column 1"):
        csv_header(repeated)


@given(st.lists(SERVABLE.map(column_name), max_size=6))
def test_a_list_of_names_as_one_csv_line_reads_back_as_it_was(names):
    """drop_columns and INFERENCE_LOG_EXCLUDE_COLUMNS: names with commas, quotes or line breaks included."""
    assert names_of_line(line_of_names(names)) == tuple(names)


def test_names_written_by_hand_read_as_a_header_would():
    assert names_of_line(' age, "debt, total" ,say "hi", ,x') == ("age", "debt, total", 'say "hi"', "x")
    assert names_of_line("instance_weight") == ("instance_weight",)
