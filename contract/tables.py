"""CSV files as the project reads them: which files, and how a header cell becomes a column name."""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from pathlib import Path

from contract.errors import DataError, ParameterError, first_line

CSV_SUFFIXES = (".csv", ".csv.gz")


def column_name(header_cell: str) -> str:
    """The column a header cell names: stray spaces around it are not part of the name."""
    return str(header_cell).strip()


def check_csv_path(path: Path, location: str, name: str) -> None:
    if path.is_dir():
        raise ParameterError(name, location, "is a directory, expected a .csv or .csv.gz file")
    if not path.name.lower().endswith(CSV_SUFFIXES):
        raise ParameterError(name, location, "expected a .csv or .csv.gz file")


def csv_header(path: Path, name: str = "data_path") -> list[str]:
    """The column names of a local CSV file, from its first line only (a cheap check before a run)."""
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
    return [column_name(cell) for cell in header]
