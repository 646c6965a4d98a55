"""Calibrated probabilities and conformal prediction sets, fitted by the train step, applied by the model.

Both are fitted on out-of-fold probabilities of the training rows (a forest's out-of-bag ones, or
cross-validated predictions): rows the trees that score them did not see, so no data is held back from the
trees (docs/training.md says why and what the test split then shows).

- :class:`Calibration` maps the model's probabilities to calibrated ones: isotonic (the positive class's
  probability through a monotone step map; from 1,000 rows, below which it overfits), sigmoid (Platt scaling of
  the positive class's log-odds: for gradient boosting these are its own scores, so explanations in log-odds
  stay exact), or temperature (every class's log-probability divided by one number, for several classes). The
  map is kept as numbers and applied with numpy: the served model needs no scikit-learn estimator for it.
- :class:`ConformalScores` holds the nonconformity scores ``1 - p(true class)`` of the calibrated out-of-fold
  probabilities (split conformal, the LAC score). For a confidence ``c``, the classes whose score is within the
  ``ceil((n + 1) c)``-th smallest form the prediction set. Split conformal's guarantee (the true class in the
  set with probability at least ``c``) is for scores of the served model itself; these come from the models
  that scored each row out of fold, like it but not it, so the coverage is close to ``c``, not guaranteed: the
  train step measures it on the test split. Per class (Mondrian), the quantile is taken over the rows of each true
  class, so the coverage holds for each class. A set may be empty (no class is likely enough: on an easy data
  set most rows' sets hold one class, and an empty set is how the coverage is not exceeded) or hold every class.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np

NONE, ISOTONIC, SIGMOID, TEMPERATURE = "none", "isotonic", "sigmoid", "temperature"
BINARY_MAPS = (ISOTONIC, SIGMOID)  # maps of one class's probability: two classes only
ISOTONIC_MIN_ROWS = 1000  # below this many calibration rows isotonic overfits (scikit-learn's user guide)
# Probabilities of exactly 0 or 1 have infinite log-odds: the log maps read them from this floor. For a model
# whose score is log-odds the floor only guards the arithmetic; a forest's votes of 0 or 1 are floored at half a
# tree's vote (Calibration.floor, set by training), else a few confidently wrong rows at +-27 would rule the fit.
CLIP = 1e-12


def _logit(p: np.ndarray, floor: float = CLIP) -> np.ndarray:
    p = np.clip(p, floor, 1 - floor)
    return np.log(p) - np.log1p(-p)


def _expit(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True)
class Calibration:
    """A map from the model's probabilities (rows x classes) to calibrated ones."""

    method: str = NONE
    positive_index: int = 1  # binary maps (isotonic, sigmoid) move this column; the other is 1 - it
    knots: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())  # isotonic: x and y of the step map
    slope: float = 1.0  # sigmoid: p' = expit(slope * logit(p) + intercept)
    intercept: float = 0.0
    temperature: float = 1.0  # temperature: p' = softmax(log(p) / temperature)
    floor: float = CLIP  # the least probability the log maps read

    def apply(self, proba: np.ndarray) -> np.ndarray:
        if self.method == NONE:
            return proba
        if self.method == TEMPERATURE:
            logp = np.log(np.clip(proba, self.floor, 1.0)) / self.temperature
            logp -= logp.max(axis=1, keepdims=True)
            out = np.exp(logp)
            return out / out.sum(axis=1, keepdims=True)
        p = proba[:, self.positive_index]
        if self.method == ISOTONIC:
            moved = np.interp(p, np.asarray(self.knots[0]), np.asarray(self.knots[1]))
        else:
            moved = _expit(self.slope * _logit(p, self.floor) + self.intercept)
        out = np.empty_like(proba, dtype=float)
        out[:, self.positive_index] = moved
        out[:, 1 - self.positive_index] = 1.0 - moved
        return out

    def keeps_additivity(self, explains: str) -> bool:
        """Whether an explanation in ``explains`` units of the raw model stays one of the calibrated answer after
        :meth:`scale_explanation`: an affine map of a score that is a sum over trees (log-odds)."""
        return self.method == NONE or (explains == "log_odds" and self.method in (SIGMOID, TEMPERATURE))

    def scale_explanation(self, base: np.ndarray, contributions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Base values and contributions in log-odds of the raw model, as those of the calibrated answer (only
        where :meth:`keeps_additivity`): the sigmoid map scales the positive class's log-odds and shifts them (the
        other class's are their negation: shifted the other way), the temperature divides every class's score."""
        if self.method == SIGMOID:
            shift = np.where(np.arange(len(base)) == self.positive_index, self.intercept, -self.intercept)
            return self.slope * base + shift, self.slope * contributions
        if self.method == TEMPERATURE:
            return base / self.temperature, contributions / self.temperature
        return base, contributions

    def to_json(self) -> str:
        return json.dumps({"method": self.method, "positive_index": self.positive_index,
                           "knots": [list(self.knots[0]), list(self.knots[1])], "slope": self.slope,
                           "intercept": self.intercept, "temperature": self.temperature, "floor": self.floor})

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        data = json.loads(text)
        return cls(data["method"], int(data["positive_index"]), (tuple(data["knots"][0]), tuple(data["knots"][1])),
                   float(data["slope"]), float(data["intercept"]), float(data["temperature"]), float(data["floor"]))


def nonconformity(proba: np.ndarray) -> np.ndarray:
    """Each class's score a row: 1 minus its (calibrated) probability. One expression for fitting and serving,
    so that a row's score compares with the quantile exactly as a calibration row's did."""
    return 1.0 - proba


@dataclass(frozen=True)
class _Sorted:
    """Scores kept as their distinct values and how many scores are at most each (small for step maps)."""

    values: np.ndarray
    at_most: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray) -> _Sorted:
        values, counts = np.unique(scores, return_counts=True)
        return cls(values, np.cumsum(counts))

    @property
    def n(self) -> int:
        return int(self.at_most[-1]) if len(self.at_most) else 0

    def quantile(self, confidence: float) -> float:
        """The ``ceil((n + 1) confidence)``-th smallest score; infinite (every class) when that is beyond n."""
        rank = int(np.ceil((self.n + 1) * confidence))
        if rank > self.n:
            return float("inf")
        return float(self.values[np.searchsorted(self.at_most, rank)])


@dataclass(frozen=True)
class ConformalScores:
    overall: _Sorted
    by_class: tuple[_Sorted, ...] = field(default_factory=tuple)

    @classmethod
    def fit(cls, proba: np.ndarray, true_index: np.ndarray) -> ConformalScores:
        """From calibrated probabilities of held-out rows and each row's true class (its column)."""
        scores = nonconformity(proba)[np.arange(len(true_index)), true_index]
        return cls(_Sorted.of(scores), tuple(_Sorted.of(scores[true_index == k]) for k in range(proba.shape[1])))

    def thresholds(self, confidence: float, per_class: bool, n_classes: int) -> np.ndarray:
        """The largest score a class may have to be in a set, one a class."""
        if per_class:
            return np.array([self.by_class[k].quantile(confidence) for k in range(n_classes)])
        return np.full(n_classes, self.overall.quantile(confidence))

    def sets(self, proba: np.ndarray, confidence: float, per_class: bool = False) -> np.ndarray:
        """A boolean (rows x classes): whether each class is in each row's prediction set."""
        return nonconformity(proba) <= self.thresholds(confidence, per_class, proba.shape[1])[None, :]

    def to_bytes(self) -> bytes:
        arrays = {"overall_values": self.overall.values, "overall_at_most": self.overall.at_most}
        for k, kept in enumerate(self.by_class):
            arrays[f"class_{k}_values"], arrays[f"class_{k}_at_most"] = kept.values, kept.at_most
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ConformalScores:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            k = sum(1 for name in arrays.files if name.endswith("_values")) - 1
            return cls(_Sorted(arrays["overall_values"], arrays["overall_at_most"]),
                       tuple(_Sorted(arrays[f"class_{i}_values"], arrays[f"class_{i}_at_most"]) for i in range(k)))


def candidates(requested: str, n_rows: int, n_classes: int, explains: str) -> tuple[str, ...]:
    """The methods ``requested`` leaves to choose from, on held-out rows (training keeps the one with the lowest
    cross-fitted Brier score: "none" when no map beats the model's own probabilities). ``auto``: temperature for
    several classes; for two, sigmoid, and isotonic too from 1,000 rows, except where the model's score is
    log-odds (gradient boosting), whose explanations stay exact under sigmoid only."""
    if requested != "auto":
        return (requested,)
    if n_classes > 2:
        return NONE, TEMPERATURE
    if explains == "log_odds" or n_rows < ISOTONIC_MIN_ROWS:
        return NONE, SIGMOID
    return NONE, SIGMOID, ISOTONIC


def fit_calibration(method: str, proba: np.ndarray, true_index: np.ndarray, positive_index: int | None,
                    floor: float = CLIP) -> Calibration:
    """The map of ``method`` (one of :func:`candidates`) fitted on held-out probabilities and each
    row's true class (its column). Only training fits one: scikit-learn and scipy are imported here. Rows of one
    class only say nothing of how often the others come true: then the probabilities stay as they are."""
    if method == NONE or len(np.unique(true_index)) < 2:
        return Calibration()
    if method == TEMPERATURE:
        from scipy.optimize import minimize_scalar

        logp = np.log(np.clip(proba, floor, 1.0))
        rows = np.arange(len(true_index))

        def loss(log_t: float) -> float:
            z = logp / np.exp(log_t)
            z -= z.max(axis=1, keepdims=True)
            return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[rows, true_index]))

        return Calibration(TEMPERATURE, temperature=float(np.exp(minimize_scalar(loss, bounds=(-4, 4),
                                                                                   method="bounded").x)), floor=floor)
    positive = 1 if positive_index is None else positive_index
    p, y = proba[:, positive], (true_index == positive).astype(float)
    if method == ISOTONIC:
        from sklearn.isotonic import IsotonicRegression

        fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return Calibration(ISOTONIC, positive, (tuple(map(float, fitted.X_thresholds_)),
                                                tuple(map(float, fitted.y_thresholds_))))
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(C=1e6).fit(_logit(p, floor)[:, None], y)
    slope = float(fitted.coef_[0, 0])
    if not slope > 0:  # a map that reverses the ranking (a few rows against it): not a calibration, kept as is
        return Calibration()
    return Calibration(SIGMOID, positive, slope=slope, intercept=float(fitted.intercept_[0]), floor=floor)
