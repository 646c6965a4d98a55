"""Reading a step's input: local paths or any URI MLflow's artifact stores can fetch."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from urllib.parse import urlparse

import mlflow.artifacts
import pandas as pd

from contract.errors import DataError, ParameterError, first_line
from contract.tables import check_csv_path, csv_header
from pyfunc.cleaning import column_key


def local_path(location: str) -> Path | None:
    """The file system path ``location`` names (a path or a ``file:`` URI), or None for other URIs."""
    parsed = urlparse(location)
    # One-letter "schemes" are Windows drive letters, not URIs.
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:
        return Path(parsed.path if parsed.scheme == "file" else location).expanduser()
    return None


def fetch(location: str, name: str) -> Path:
    """A local path for ``location`` (a path or a URI); downloads remote URIs.

    Relative paths are taken from the working directory, which is the project
    folder when the step runs under ``mlflow run``.
    """
    path = local_path(location)
    if path is not None:
        if not path.exists():
            raise ParameterError(name, location, "no such file or directory")
        return path
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=location))
    except Exception as err:  # any store's failure becomes the caller's one-line message
        raise ParameterError(name, location, f"cannot fetch: {first_line(err)}") from None


def _read_csv(path: Path, location: str, name: str, **options: object) -> pd.DataFrame:
    """``pd.read_csv`` of every cell as text, its failures as one-line DataErrors."""
    check_csv_path(path, location, name)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, **options)
    except pd.errors.EmptyDataError:
        raise DataError(f"{name}: {location} is empty") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{name}: {location} is not UTF-8 text (byte {err.start})") from None
    except (pd.errors.ParserError, gzip.BadGzipFile, zlib.error, EOFError) as err:
        raise DataError(f"{name}: {location} is not a readable CSV: {first_line(err)}") from None
    frame.columns = [column_key(c) for c in frame.columns]
    return frame


def read_raw_csv(location: str, name: str = "data_path") -> pd.DataFrame:
    """Every cell of the CSV as the text it holds: nothing parsed, nothing guessed yet."""
    path = fetch(location, name)
    csv_header(path, name)  # the header's rules (contract/tables.py), before pandas renames blank and repeated names
    frame = _read_csv(path, location, name)
    if frame.empty:
        raise DataError(f"{name}: {location} has a header but no rows")
    return frame
