"""Typed, validated parameters of the MLproject entry points, and of ``POST /train``.

MLflow does not check ``int``/``float`` parameter types, so every step parses
its own arguments here and fails with one line that names the parameter. Each
parameter is a dataclass field whose metadata holds its parser, its help text
and, for the gateway, its JSON type and bounds (:class:`Api`); MLproject declares
the same names and defaults (a unit test keeps the two in step), and the
gateway builds its request model from these fields.
"""

from __future__ import annotations

import argparse
import difflib
from datetime import UTC, datetime
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar

from contract.errors import ParameterError
from contract.names import DEFAULT_DATA_PATH, DEFAULT_MODEL_NAME, DEFAULT_TARGET, valid_model_name, valid_version
from contract.tables import line_of_names, names_of_line

METRICS = ("f1", "roc_auc", "accuracy", "precision", "recall")
# Differences between the groups of the sensitive columns (steps/fairness.py): lower is better, so they may guard a
# promotion but not be the metric it maximises
FAIRNESS_METRICS = ("demographic_parity_difference", "equalized_odds_difference")
GUARD_METRICS = METRICS + FAIRNESS_METRICS
PROMOTE = ("never", "if_better", "canary")
CALIBRATIONS = ("auto", "isotonic", "sigmoid", "temperature", "none")
# The tree ensembles a model can be (pyfunc/pipeline.py: ESTIMATORS builds each): the seed's random forest,
# extremely randomised trees (random cut points, no bootstrap: faster to fit, often as good) and scikit-learn's
# histogram gradient boosting (small trees added one after another: usually the best ranking on tabular data).
MODEL_TYPES = ("random_forest", "extra_trees", "hist_gradient_boosting")
FORESTS = ("random_forest", "extra_trees")
# Each family's own parameters among ForestParams' fields (the others are shared, or say which family to build)
FOREST_ONLY = ("n_estimators", "max_features", "n_jobs")
BOOSTING_ONLY = ("learning_rate", "max_iter", "max_leaf_nodes", "l2_regularization", "early_stopping")

# Cells that mean "missing" besides blank ones, unless a run says otherwise (na_values): the census
# data's "?" and what pandas' read_csv takes for missing by default (R, spreadsheets and databases write them)
DEFAULT_NA_VALUES: tuple[str, ...] = ("?", "NA", "N/A", "n/a", "NaN", "nan", "-NaN", "-nan", "NULL", "null",
                                      "None", "#N/A", "#NA", "<NA>")

Parser = Callable[[str], Any]
P = TypeVar("P")


@dataclass(frozen=True)
class Api:
    """How a parameter looks in the gateway's JSON body: its type and pydantic bounds.

    The parser still decides what is valid; the bounds document it in the OpenAPI
    schema and cap what a shared service accepts (e.g. at most 2,000 trees).
    """

    type: Any
    bounds: dict[str, Any] = field(default_factory=dict)


def param(default: Any, parse: Parser, help: str, api: Api | None) -> Any:
    """A parameter; ``api`` None: not one of POST /train's fields (set by the gateway, or a step's own)."""
    return field(default=default, metadata={"parse": parse, "help": help, "api": api})


def _int(raw: str, minimum: int | None = None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError("expected a whole number") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"must be at least {minimum}")
    return value


def positive_int(raw: str) -> int:
    return _int(raw, minimum=1)


def any_int(raw: str) -> int:
    return _int(raw)


def n_jobs(raw: str) -> int:
    value = _int(raw)
    if value == 0 or value < -1:
        raise ValueError("expected -1 (all cores) or a number of cores >= 1")
    return value


def _is_none(raw: str) -> bool:
    return raw.strip().lower() in ("", "none", "null")


def optional_positive_int(raw: str) -> int | None:
    return None if _is_none(raw) else positive_int(raw)


def open_fraction(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number between 0 and 1") from None
    if not 0.0 < value < 1.0:
        raise ValueError("expected a number strictly between 0 and 1")
    return value


def max_features(raw: str) -> str | int | float | None:
    text = raw.strip().lower()
    if _is_none(text):
        return None
    if text in ("sqrt", "log2"):
        return text
    try:
        return positive_int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected sqrt, log2, none, a whole number >= 1 or a fraction") from None
    if not 0.0 < value <= 1.0:
        raise ValueError("a fraction of features must be in (0, 1]")
    return value


def class_weight(raw: str) -> str | None:
    text = raw.strip().lower()
    if _is_none(text):
        return None
    if text in ("balanced", "balanced_subsample"):
        return text
    raise ValueError("expected none, balanced or balanced_subsample")


def column_list(raw: str) -> tuple[str, ...]:
    return names_of_line(raw)  # one CSV line: a name with a comma in double quotes


def na_markers(raw: str) -> tuple[str, ...]:
    # Blank cells are always missing; these are the extra markers.
    return column_list(raw)


def boolean(raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError("expected true or false")


def threshold(raw: str) -> str | float:
    text = raw.strip().lower()
    if text == "auto":
        return text
    try:
        return open_fraction(text)
    except ValueError:
        raise ValueError("expected auto or a number strictly between 0 and 1") from None


def learning_rate(raw: str) -> float:
    return _number(raw, lambda value: 0 < value <= 1, "expected a number above 0 and at most 1")


def optional_max_leaf_nodes(raw: str) -> int | None:
    if _is_none(raw):
        return None
    value = _int(raw, minimum=2)
    return value


def non_negative_int(raw: str) -> int:
    return _int(raw, minimum=0)


def cv_folds(raw: str) -> int:
    value = any_int(raw)
    if not 2 <= value <= 20:
        raise ValueError("expected a whole number from 2 to 20")
    return value


def required_text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def optional_text(raw: str) -> str:
    return raw.strip()


def model_name(raw: str) -> str:
    if not valid_model_name(raw.strip()):
        raise ValueError("expected 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return raw.strip()


def optional_model_name(raw: str) -> str:
    return model_name(raw) if raw.strip() else ""


def optional_version(raw: str) -> str:
    text = raw.strip()
    if text and not valid_version(text):
        raise ValueError("expected a version number (1, 2, ...) or nothing")
    return text


def moment(raw: str) -> float | None:
    """A time in ISO 8601 (UTC when it gives no offset) as seconds since the epoch; empty: none."""
    text = raw.strip()
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("expected a time in ISO 8601, e.g. 2026-11-27T09:30:00 (UTC unless an offset is given)"
                         ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _number(raw: str, acceptable: Callable[[float], bool], requirement: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number") from None
    if not acceptable(value):
        raise ValueError(requirement)
    return value


def positive_number(raw: str) -> float:
    return _number(raw, lambda value: value > 0, "must be above 0")


def non_negative_number(raw: str) -> float:
    return _number(raw, lambda value: value >= 0, "must be 0 or more")


def metric_list(raw: str) -> tuple[str, ...]:
    names = column_list(raw)
    unknown = [n for n in names if n not in GUARD_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; expected some of {', '.join(GUARD_METRICS)}")
    return names


def seed(raw: str) -> int:
    value = _int(raw, minimum=0)
    if value > 2**32 - 1:  # what numpy's random generators accept
        raise ValueError("must be at most 4294967295")
    return value


def model_type_list(raw: str) -> tuple[str, ...]:
    names = column_list(raw)
    unknown = [n for n in names if n not in MODEL_TYPES]
    if unknown or not names:
        raise ValueError(f"expected some of {', '.join(MODEL_TYPES)}" + (f", not {', '.join(unknown)}" if unknown
                                                                          else ""))
    return names


def choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.strip() not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return raw.strip()

    return parse


def random_state() -> Any:
    # the data split and the model share one seed; a field object cannot be shared by two dataclasses
    return param(42, seed, "seed for the split and the model", Api(int, {"ge": 0, "le": 2**32 - 1}))


TEXT = Api(str, {"max_length": 4096})


@dataclass(frozen=True)
class DataParams:
    """Where the data comes from and how it is split (the ``preprocess`` step)."""

    data_path: str = param(DEFAULT_DATA_PATH, required_text, "CSV file (.csv/.csv.gz) or URI",
                           Api(str, {"min_length": 1, "max_length": 4096}))
    target: str = param(DEFAULT_TARGET, required_text, "label column", Api(str, {"min_length": 1, "max_length": 256}))
    na_values: tuple[str, ...] = param(
        DEFAULT_NA_VALUES, na_markers, "comma-separated missing-value markers (blanks always are)", TEXT)
    # instance_weight is a survey weight the UCI notes say not to use as a feature.
    drop_columns: tuple[str, ...] = param(("instance_weight",), column_list, "comma-separated columns to leave out",
                                          TEXT)
    test_size: float = param(0.2, open_fraction, "held-out fraction, stratified", Api(float, {"gt": 0, "lt": 1}))
    random_state: int = random_state()
    # rows the inference log holds true labels for (POST /feedback), added to the data before the split
    feedback_from: str = param("", optional_model_name, "add the logged rows of this model that have feedback "
                               "labels to the data; empty = none", TEXT)
    inference_log: str = param("", optional_text, "the inference log's URL (for feedback_from); empty = "
                               "INFERENCE_LOG_URI or the local stack's", None)


@dataclass(frozen=True)
class ForestParams:
    """The tree ensemble and its hyperparameters."""

    model_type: str = param("random_forest", choice(MODEL_TYPES), "the tree ensemble: " + " or ".join(MODEL_TYPES),
                            Api(Literal[MODEL_TYPES]))
    n_estimators: int = param(100, positive_int, "number of trees", Api(int, {"ge": 1, "le": 2000}))
    max_depth: int | None = param(None, optional_positive_int, "tree depth limit, none = unlimited",
                                  Api(int | None, {"ge": 1, "le": 1000}))
    min_samples_leaf: int = param(1, positive_int, "minimum rows per leaf", Api(int, {"ge": 1, "le": 100_000}))
    max_features: str | int | float | None = param(
        "sqrt", max_features, "features per split: sqrt, log2, none, N or a fraction", Api(str | int | float | None))
    class_weight: str | None = param(None, class_weight, "none, balanced or balanced_subsample",
                                     Api(Literal["balanced", "balanced_subsample", "none"] | None))
    random_state: int = random_state()
    n_jobs: int = param(-1, n_jobs, "cores used to fit, -1 = all (forests)", Api(int, {"ge": -1, "le": 64}))
    # hist_gradient_boosting only (max_depth, min_samples_leaf, class_weight and random_state apply to it too)
    learning_rate: float = param(0.1, learning_rate, "gradient boosting: shrinkage of each tree, in (0, 1]",
                                 Api(float, {"gt": 0, "le": 1}))
    max_iter: int = param(200, positive_int, "gradient boosting: most boosting iterations (trees a class)",
                          Api(int, {"ge": 1, "le": 5000}))
    max_leaf_nodes: int | None = param(31, optional_max_leaf_nodes, "gradient boosting: leaves a tree, none = "
                                       "unlimited", Api(int | None, {"ge": 2, "le": 10_000}))
    l2_regularization: float = param(0.0, non_negative_number, "gradient boosting: L2 penalty on leaf values",
                                     Api(float, {"ge": 0, "le": 1000}))
    early_stopping: bool = param(True, boolean, "gradient boosting: stop when 10% of the training split held "
                                 "out stops improving (10 iterations)", Api(bool))

    def __post_init__(self) -> None:
        if self.model_type == "hist_gradient_boosting" and self.class_weight == "balanced_subsample":
            raise ParameterError("class_weight", "balanced_subsample",
                                 "balanced_subsample is for forests; gradient boosting takes none or balanced")

    def sklearn_kwargs(self) -> dict[str, Any]:
        """The estimator's own parameters (``model_type`` chooses the estimator; each family gets its own)."""
        not_this_family = BOOSTING_ONLY if self.model_type in FORESTS else FOREST_ONLY
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "model_type" and f.name not in not_this_family}


@dataclass(frozen=True)
class ModelParams:
    """How the trained model is evaluated, registered and promoted."""

    model_name: str = param(DEFAULT_MODEL_NAME, model_name, "registered model name", TEXT)
    positive_class: str = param(
        "", optional_text, "class scored as positive in binary metrics; empty = the rarest class", TEXT)
    metric: str = param("f1", choice(METRICS), "metric that tuning maximises and promotion compares",
                        Api(Literal[METRICS]))
    promote: str = param("never", choice(PROMOTE),
                         "if_better: serve the new version if it beats the served one on the new test split; "
                         "canary: if so, start a canary of it instead (the challenger alias)", Api(Literal[PROMOTE]))
    min_delta: float = param(0.005, non_negative_number, "the least gain in metric that counts as beating the "
                             "served version", Api(float, {"ge": 0, "le": 1}))
    guard_metrics: tuple[str, ...] = param(("accuracy", "roc_auc"), metric_list, "comma-separated metrics that "
                                           "must not drop by more than guard_tolerance (the fairness differences "
                                           "must not rise by more)", TEXT)
    guard_tolerance: float = param(0.01, non_negative_number, "how much a guard metric may drop",
                                   Api(float, {"ge": 0, "le": 1}))
    threshold: str | float = param(
        "auto", threshold, "binary targets: positive_class is the label from this probability of it on; auto = the "
        "cut-off that maximises metric (f1 for roc_auc) on out-of-fold predictions of the training split",
        Api(Literal["auto"] | float))
    calibration: str = param(
        "auto", choice(CALIBRATIONS), "how the probabilities are calibrated on out-of-fold predictions of the "
        "training split (isotonic and sigmoid: binary targets); auto = of none, sigmoid, isotonic (forests, from "
        "1,000 rows) or temperature (multiclass), the map with the lowest cross-fitted Brier score",
        Api(Literal[CALIBRATIONS]))
    sensitive_columns: tuple[str, ...] = param(
        (), column_list, "comma-separated input columns whose groups fairness is reported by (binary targets: "
        "selection rate, accuracy, true and false positive rates a group); empty = no fairness report", TEXT)

    def __post_init__(self) -> None:
        fairness = [m for m in self.guard_metrics if m in FAIRNESS_METRICS]
        if fairness and not self.sensitive_columns:
            raise ParameterError("guard_metrics", line_of_names(self.guard_metrics),
                                 f"{', '.join(fairness)} needs sensitive_columns (the groups it compares)")


@dataclass(frozen=True)
class TuneParams:
    """The hyperparameter search of the ``tune`` step."""

    max_trials: int = param(20, positive_int, "number of candidate models to try", Api(int, {"ge": 1, "le": 500}))
    timeout_s: int = param(0, non_negative_int, "stop starting trials after this many seconds; 0 = no limit",
                           Api(int, {"ge": 0, "le": 86_400}))
    cv_folds: int = param(3, cv_folds, "stratified folds of the training split each trial is scored on",
                          Api(int, {"ge": 2, "le": 20}))
    model_types: tuple[str, ...] = param(MODEL_TYPES, model_type_list, "comma-separated tree ensembles the search "
                                         "tries (" + ", ".join(MODEL_TYPES) + ")", TEXT)


@dataclass(frozen=True)
class SplitParams:
    """Where the ``train`` step finds the output of ``preprocess``."""

    splits_uri: str = param("", required_text, "artifact URI or folder with train/test Parquet", TEXT)
    target: str = param("", optional_text, "label column; empty = the one preprocess split on", TEXT)


@dataclass(frozen=True)
class MonitorParams:
    """The ``monitor`` step: which predictions to compare with the training data, and the drift rules."""

    model_name: str = param(DEFAULT_MODEL_NAME, model_name, "registered model whose predictions are monitored", TEXT)
    version: str = param("", optional_version, "one version; empty = every version with logged predictions",
                         Api(str, {"max_length": 10}))
    since: float | None = param(None, moment, "from this time (ISO 8601, UTC unless an offset is given); "
                                "empty = the start of the log", TEXT)
    until: float | None = param(None, moment, "until this time (excluded); empty = now", TEXT)
    inference_log: str = param("", optional_text, "the inference log's URL; empty = INFERENCE_LOG_URI or the "
                               "local stack's", None)
    p_value: float = param(0.05, open_fraction, "drift when a test's p-value is below this (KS, chi-squared)", None)
    distance: float = param(0.1, positive_number, "drift when a distance is above this (normalised Wasserstein, "
                            "Jensen-Shannon)", None)
    small_sample: int = param(1000, positive_int, "a sample this small or smaller is compared by a test, a "
                              "larger one by a distance", None)
    min_feedback: int = param(30, positive_int, "true labels needed before live quality is computed", None)
    max_rows: int = param(100_000, positive_int, "the newest logged rows read at most", None)


def set_confidence(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value < 1.0:
        raise ValueError("expected a number from 0 (no prediction sets) to below 1, such as 0.9")
    return value


# Spark master URLs: local, local[N], local[*], local[N,F], spark://, yarn, k8s://, mesos://
_SPARK_MASTER = re.compile(r"local(\[(\*|[1-9][0-9]*)(,[1-9][0-9]*)?\])?|yarn|(spark|k8s|mesos)://\S+")


def spark_master(raw: str) -> str:
    if not _SPARK_MASTER.fullmatch(raw.strip()):
        raise ValueError("expected local[*], local[N], spark://host:port, yarn or k8s://https://host:port")
    return raw.strip()


@dataclass(frozen=True)
class ScoreParams:
    """Batch scoring on Spark (the ``score`` step)."""

    model_uri: str = param("", optional_text,
                           f"model to score with; empty = the served version of {DEFAULT_MODEL_NAME} (SERVE_ALIAS)",
                           TEXT)
    input_path: str = param(DEFAULT_DATA_PATH, required_text,
                            "CSV (.csv/.csv.gz) or Parquet, a file or a folder, a path or a URI Spark reads", TEXT)
    output_path: str = param("scores.parquet", required_text, "Parquet folder written (replaced if it exists)",
                             TEXT)
    spark_master: str = param("local[*]", spark_master, "Spark master URL", TEXT)
    explain: bool = param(False, boolean, "true: add base_value and contrib_<column> (exact TreeSHAP of the "
                          "predicted class) to every row", None)
    confidence: float = param(0.0, set_confidence, "above 0: add prediction_set, the classes that together hold "
                              "the true one with this probability (conformal), and confidence", None)


# Names people reach for first, and the parameter they mean (what a string distance does not find)
SYNONYMS = {"n_trees": "n_estimators", "trees": "n_estimators", "num_trees": "n_estimators",
            "depth": "max_depth", "label": "target", "target_column": "target", "label_column": "target",
            "data": "data_path", "path": "data_path", "file": "data_path", "csv": "data_path",
            "name": "model_name", "model": "model_name", "trials": "max_trials", "n_trials": "max_trials",
            "folds": "cv_folds", "seed": "random_state", "timeout": "timeout_s"}


def closest(name: str, options: Sequence[str]) -> str | None:
    """The option ``name`` was most likely meant to be (a typo of it), if any is close enough."""
    return next(iter(difflib.get_close_matches(name, options, n=1, cutoff=0.6)), None)


def unknown_names_error(unknown: Sequence[str], valid: Sequence[str]) -> str:
    """The one message for parameters that do not exist: each with the closest valid name, then the list."""
    hints = []
    for name in unknown:
        guess = SYNONYMS.get(name.lower()) if SYNONYMS.get(name.lower()) in valid else closest(name, valid)
        hints.append(f"{name!r} (did you mean {guess!r}?)" if guess else repr(name))
    return f"unknown parameter {', '.join(hints)}; the parameters are: {', '.join(sorted(valid))}"


def format_value(value: Any) -> str:
    """The MLproject string form of a parsed value (parsing it again gives ``value``)."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return line_of_names(value)
    return str(value)


def to_arguments(*groups: Any) -> dict[str, str]:
    """Parameters of parsed groups as MLproject strings, to pass to another entry point."""
    return {f.name: format_value(getattr(g, f.name)) for g in groups for f in fields(g)}


def parse_params(cls: type[P], raw: Mapping[str, str]) -> P:
    """Build ``cls`` from raw strings, using defaults for absent names."""
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in raw:
            try:
                values[f.name] = f.metadata["parse"](raw[f.name])
            except ValueError as err:
                raise ParameterError(f.name, raw[f.name], str(err)) from None
    return cls(**values)


def parse_cli(argv: Sequence[str] | None, *groups: type) -> tuple[Any, ...]:
    """Parse ``--name value`` arguments for the given parameter groups."""
    parser = argparse.ArgumentParser()
    seen: set[str] = set()
    for group in groups:
        for f in fields(group):
            if f.name not in seen:
                seen.add(f.name)
                parser.add_argument(f"--{f.name}", default=None, help=f.metadata["help"])
    namespace = parser.parse_args(argv)
    raw = {name: value for name, value in vars(namespace).items() if value is not None}
    return tuple(parse_params(group, raw) for group in groups)
