"""Names the packages must agree on: defaults, tag names, the patterns of registry names.

A name written here is written nowhere else. The alias the model server
follows is a setting (``SERVE_ALIAS``, :mod:`contract.settings`), not a name.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

DEFAULT_MODEL_NAME = "census-income-classifier"
DEFAULT_DATA_PATH = "data/census-income-sample.csv.gz"
DEFAULT_TARGET = "income"
DEFAULT_EXPERIMENT = "tabular-classifier"

# The alias of a version being tried beside the served one (the Staging stage's alias).
CHALLENGER_ALIAS = "challenger"
# The version a promotion replaced: what POST /models/{name}/rollback restores.
PREVIOUS_ALIAS = "previous"

# Run and model-version tags written by the steps and read by the gateway.
TAG_ERROR = "error"  # a failed step's one-line reason
TAG_MODEL_NAME = "model_name"
TAG_MODEL_VERSION = "model_version"
TAG_TRAIN_RUN_ID = "train_run_id"
TAG_PREPROCESS_RUN_ID = "preprocess_run_id"
TAG_TARGET = "target"
TAG_DECISION_THRESHOLD = "decision_threshold"  # a version's cut-off, or "argmax" (multiclass)
# Set by training on a version: how its probabilities were calibrated (isotonic, sigmoid, temperature or none)
# and two of its test-split figures, which monitoring and the alert rules compare live figures with.
TAG_CALIBRATION = "calibration"
TAG_TEST_ACCURACY = "test_accuracy"
TAG_TEST_CALIBRATION_ERROR = "test_calibration_error"
TAG_TUNING_RUN_ID = "tuning_run_id"
TAG_TUNED_PARAMS = "tuned_params"
TAG_JOB_ID = "job_id"
PROMOTION_TAG_PREFIX = "promotion_"
# Written by the monitor step: artifacts of its run (they grow with the columns: never a tag), and short tags
# on the run and on the monitored version.
MONITORING_SUMMARY_ARTIFACT = "summary.json"
MONITORING_COLUMNS_ARTIFACT = "columns.json"  # {store key: the column's name}
TAG_MONITORING_STATUS = "monitoring_status"  # ok, drift or insufficient_data
TAG_MONITORING_RUN_ID = "monitoring_run_id"
TAG_MONITORING_DRIFT_SHARE = "monitoring_drift_share"
TAG_MONITORING_LIVE_ACCURACY = "monitoring_live_accuracy"
TAG_MONITORING_AT = "monitoring_at"
# performance estimated from the calibrated probabilities alone (no labels needed)
TAG_MONITORING_ESTIMATED_ACCURACY = "monitoring_estimated_accuracy"
# from feedback: the share of true labels inside the prediction sets served, the level those sets were asked
# for (the most common one in the window) and how many labelled rows had a set
TAG_MONITORING_REALISED_COVERAGE = "monitoring_realised_coverage"
TAG_MONITORING_COVERAGE_TARGET = "monitoring_coverage_target"
TAG_MONITORING_COVERAGE_ROWS = "monitoring_coverage_rows"
TAG_MONITORING_LIVE_CALIBRATION_ERROR = "monitoring_live_calibration_error"
# the rows with a true label behind the live figures (live accuracy, live calibration error): an alert rule
# needs it, as a few rows alone give a calibration error well above 0
TAG_MONITORING_FEEDBACK_ROWS = "monitoring_feedback_rows"
# fairness from feedback, over the version's sensitive columns
TAG_MONITORING_DEMOGRAPHIC_PARITY = "monitoring_demographic_parity_difference"
TAG_MONITORING_EQUALIZED_ODDS = "monitoring_equalized_odds_difference"
# Set on a version by a promotion or a rollback, and on the model by an automatic rollback.
TAG_PROMOTED_AT = "promoted_at"
TAG_PROMOTED_BY = "promoted_by"
TAG_ROLLED_BACK_AT = "rolled_back_at"
TAG_ROLLBACK_REASON = "rollback_reason"

# MLflow's own tags that tie a step's run to its driver run.
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
MLFLOW_ENTRY_POINT = "mlflow.project.entryPoint"

# Registry names end up in URIs (models:/<name>/<version>) and URL paths.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
VERSION_PATTERN = r"^[1-9][0-9]{0,9}$"
# MLflow's alias rule, less the names MLflow reserves: ``latest`` (any case) and ``v<digits>``.
ALIAS_PATTERN = r"^(?![Ll][Aa][Tt][Ee][Ss][Tt]$)(?![vV][0-9]+$)[A-Za-z_][A-Za-z0-9_-]{0,254}$"


def _matcher(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern.removeprefix("^").removesuffix("$"))


_MODEL_NAME, _VERSION, _ALIAS = map(_matcher, (MODEL_NAME_PATTERN, VERSION_PATTERN, ALIAS_PATTERN))


def valid_model_name(name: str) -> bool:
    return bool(_MODEL_NAME.fullmatch(name))


def valid_version(version: str) -> bool:
    return bool(_VERSION.fullmatch(version))


def valid_alias(alias: str) -> bool:
    return bool(_ALIAS.fullmatch(alias))


# A user's name (a column) as the key of a store that restricts names: a file name, an MLflow metric key.
# The slug keeps it readable; the hash of the exact name keeps two names apart (``a/b`` and ``a_b``, ``A``
# and ``a`` on a case-insensitive disk). Characters allowed in both stores, bounded well under MLflow's 250.
STORE_KEY_SLUG_LENGTH = 48
STORE_KEY_HASH_LENGTH = 12  # hex digits of SHA-256: 48 bits
_NOT_IN_KEY = re.compile(r"[^A-Za-z0-9_-]+")


def store_key(name: str) -> str:
    """The one mapping from a user's name to a store key: ``<readable slug>-<hash of the exact name>``."""
    ascii_text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = _NOT_IN_KEY.sub("_", ascii_text).strip("_-")[:STORE_KEY_SLUG_LENGTH] or "x"
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:STORE_KEY_HASH_LENGTH]
    return f"{slug}-{digest}"
