"""What a registered version expects and answers, read from its artifacts (never by loading it).

The columns, their kinds and the missing-value markers come from the model's
``feature_schema.json``, the classes and the label's type from its signature
(``MLmodel``), an example from its logged input example. Read once per version
(versions do not change) and kept, least recently used out.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import yaml

from contract.model_output import PROBA_PREFIX
from contract.registry import Registry

SCHEMA_FILE = "artifacts/feature_schema.json"
CACHED_VERSIONS = 64

log = logging.getLogger("gateway.model_info")


class NotOurModel(ValueError):
    """The version was not logged by this project (no feature schema or output signature)."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    numeric: list[str]
    categorical: list[str]
    na_values: list[str]
    classes: list[Any]
    label_type: str  # the signature's type of ``label``: string, long or double
    example: list[dict[str, Any]]

    @property
    def columns(self) -> list[tuple[str, str]]:
        """(name, kind) in the model's order: numbers first, then categories."""
        return [(c, "number") for c in self.numeric] + [(c, "category") for c in self.categorical]

    @property
    def outputs(self) -> list[tuple[str, str]]:
        """(name, type) of each prediction column: label, probability, proba_<class>."""
        return [("label", self.label_type), ("probability", "double"),
                *((f"{PROBA_PREFIX}{c}", "double") for c in self.classes)]


def read_model_info(registry: Registry, tracking_uri: str, name: str, version: str) -> ModelInfo:
    """Download the few small files that describe ``name`` version ``version``."""
    base = registry.client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory() as tmp:
        def fetch(path: str) -> Path | None:
            try:
                return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/{path}", dst_path=tmp,
                                                                tracking_uri=tracking_uri))
            except Exception as err:  # noqa: BLE001 (absent: the caller says what is missing)
                # also a refusal or a network error, which "not logged by this project" would hide
                log.warning("version %s of %r: could not read %s: %s", version, name, path, str(err)[:300])
                return None

        schema_file, mlmodel_file = fetch(SCHEMA_FILE), fetch("MLmodel")
        if schema_file is None or mlmodel_file is None:
            raise NotOurModel(f"version {version} of '{name}' was not logged by this project: it has no "
                              "feature schema")
        schema = json.loads(schema_file.read_text(encoding="utf-8"))
        mlmodel = yaml.safe_load(mlmodel_file.read_text(encoding="utf-8"))
        outputs = json.loads((mlmodel.get("signature") or {}).get("outputs") or "[]")
        example_name = (mlmodel.get("saved_input_example_info") or {}).get("artifact_path", "input_example.json")
        example_file = fetch(example_name)
        example = json.loads(example_file.read_text(encoding="utf-8")) if example_file else {}
    types = {o["name"]: o["type"] for o in outputs}
    classes = [typed(o["name"].removeprefix(PROBA_PREFIX), types.get("label", "string"))
               for o in outputs if o["name"].startswith(PROBA_PREFIX)]
    return ModelInfo(name, version, schema["numeric"], schema["categorical"], schema["na_values"], classes,
                     types.get("label", "string"), example_records(example))


def typed(text: str, label_type: str) -> Any:
    return {"long": int, "double": float}.get(label_type, str)(text)


def example_records(example: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of MLflow's saved input example (``{"columns": [...], "data": [[...], ...]}``)."""
    columns, data = example.get("columns"), example.get("data")
    if not isinstance(columns, list) or not isinstance(data, list):
        return []
    return [dict(zip(columns, row, strict=False)) for row in data]


class ModelInfoCache:
    def __init__(self, registry: Registry, tracking_uri: str, size: int = CACHED_VERSIONS):
        self.registry = registry
        self.tracking_uri = tracking_uri
        self.size = size
        self._cache: OrderedDict[tuple[str, str], ModelInfo] = OrderedDict()

    def get(self, name: str, version: str) -> ModelInfo:
        key = (name, version)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        info = read_model_info(self.registry, self.tracking_uri, name, version)
        self._cache[key] = info
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return info
