"""CSV files as the project reads them: which files, and how a header cell becomes a column name."""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from contract.errors import DataError, ParameterError, first_line

CSV_SUFFIXES = (".csv", ".csv.gz")


def column_name(header_cell: str) -> str:
    """The column a header cell names: stray spaces around it are not part of the name."""
    return str(header_cell).strip()


def names_of_line(raw: str) -> tuple[str, ...]:
    """Column names given as one CSV line, as a header holds them (``age,"debt, total",say "hi"``): a name with a
    comma, a line break or a leading quote in double quotes; spaces around each and empty names dropped.
    Raises ValueError for a line CSV cannot read."""
    try:
        rows = csv.reader(io.StringIO(raw, newline=""), skipinitialspace=True)  # `a, "b, c"` as `a,"b, c"`
        return tuple(column_name(c) for row in rows for c in row if c.strip())
    except csv.Error as err:
        raise ValueError(f"not one CSV line of names: {err}") from None


def line_of_names(names: Sequence[str]) -> str:
    """``names`` as the one CSV line :func:`names_of_line` reads back."""
    line = io.StringIO()
    csv.writer(line, lineterminator="\r\n").writerow(names)  # \r and \n in a name are quoted for this line end
    return line.getvalue().removesuffix("\r\n")


# Column names are data: any text a header cell holds names a column (``/ . ( ) " ' : # \\``, accents, any
# script, any length), except what no path could serve, refused before training (docs/training.md).
NUL = "\x00"


def check_column_names(names: Sequence[str], name: str = "data_path", reserved: Collection[str] = ()) -> None:
    """Refuse, with one line naming the first column at fault and the rule, a header no model could serve:
    an empty name, a NUL character (text stores such as PostgreSQL refuse it), two cells naming the same
    column once stray spaces are dropped (:func:`column_name`), or a name in ``reserved`` (a column the
    model's answers add beside the inputs, as the score step writes them: the caller gives them)."""
    seen: dict[str, int] = {}
    for position, cell in enumerate(names, 1):
        column = column_name(cell)
        where = f"{name}: column {position} ({column!r})"
        if not column:
            raise DataError(f"{name}: column {position} has an empty name: name every column in the header")
        if NUL in column:
            raise DataError(f"{where}: a column name cannot hold a NUL character")
        if column in seen:
            raise DataError(f"{where} names the same column as column {seen[column]} (names are compared "
                            "without the spaces around them): rename one")
        if column in reserved:
            raise DataError(f"{where} is named like a column the model's answers add "
                            "(label, probability, proba_<class>, contrib_<column>, ...): rename it")
        seen[column] = position


def check_csv_path(path: Path, location: str, name: str) -> None:
    if path.is_dir():
        raise ParameterError(name, location, "is a directory, expected a .csv or .csv.gz file")
    if not path.name.lower().endswith(CSV_SUFFIXES):
        raise ParameterError(name, location, "expected a .csv or .csv.gz file")


def csv_header(path: Path, name: str = "data_path") -> list[str]:
    """The column names of a local CSV file, from its first line only (a cheap check before a run), refused
    as :func:`check_column_names` says."""
    check_csv_path(path, str(path), name)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
            header = next(csv.reader(text), None)
    except UnicodeDecodeError as err:
        raise DataError(f"{name}: {path} is not UTF-8 text (byte {err.start})") from None
    except (csv.Error, gzip.BadGzipFile, zlib.error, EOFError, OSError) as err:
        raise DataError(f"{name}: {path} is not a readable CSV: {first_line(err)}") from None
    if not header:
        raise DataError(f"{name}: {path} is empty")
    check_column_names(header, name)
    return [column_name(cell) for cell in header]


def csv_rows(body: bytes) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of a CSV request body (a header row, then the rows), cells as text as the
    file holds them; blank lines skipped.

    Raises ValueError naming the line at fault. Every service that accepts
    ``text/csv`` reads it with this, so a CSV body means the same everywhere.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"CSV body is not UTF-8 text (byte {err.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header:
            raise ValueError("CSV body has no header row")
        rows = []
        for row in reader:
            if not row:
                continue  # a blank line, as at the end of a file
            if len(row) != len(header):
                raise ValueError(f"CSV line {reader.line_num} has {len(row)} cells, the header has {len(header)}")
            rows.append(row)
    except csv.Error as err:
        raise ValueError(f"CSV body is not readable: {err}") from None
    return header, rows


def csv_records(body: bytes) -> list[dict[str, str]]:
    """:func:`csv_rows` as one dict a row (header cell: text)."""
    header, rows = csv_rows(body)
    return [dict(zip(header, row, strict=True)) for row in rows]


def csv_columns(body: bytes) -> tuple[list[str], list[tuple[str, ...]]]:
    """:func:`csv_rows` column by column (the header, then each column's cells): what a model reads, without
    a dict a row between (a third of the time of reading a 1,000-row body into dicts)."""
    header, rows = csv_rows(body)
    return header, columns_of(rows, len(header))


def columns_of(rows: Sequence[Sequence[Any]], width: int) -> list[tuple[Any, ...]]:
    """Rows of ``width`` cells as columns (a tuple of cells each, transposed in C); ``width`` empty ones for no rows."""
    return list(zip(*rows, strict=True)) if rows else [() for _ in range(width)]
