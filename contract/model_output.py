"""What a served version of this project's model answers, as the gateway reads it.

The model defines these in ``pyfunc/model.py``: its code is logged with each version and imports
nothing outside ``pyfunc``, so the names are written twice, here for the services and there for the
model, and ``tests/unit/contract/test_model_output.py`` holds the two copies equal.
"""

from __future__ import annotations

PROBA_PREFIX = "proba_"  # proba_<class>: one column a class
# predict(..., params={EXPLAIN_PARAM: True, EXPLAIN_CLASSES_PARAM: "predicted" | "all"})
EXPLAIN_PARAM = "explain"
EXPLAIN_CLASSES_PARAM = "explain_classes"
EXPLAIN_CLASSES = ("predicted", "all")
BASE_VALUE_COLUMN = "base_value"
CONTRIB_PREFIX = "contrib_"  # contrib_<input column>, for the predicted class
EXPLANATIONS_COLUMN = "explanations"  # with "all": {class: {"base_value": b, "contributions": {column: v}}}
# what base_value + the contributions add up to: "probability" (forests) or "log_odds" (gradient boosting);
# versions from before it explained probabilities
EXPLAINS_COLUMN = "explains"
# predict(..., params={CONFIDENCE_PARAM: 0.9}): each row adds PREDICTION_SET_COLUMN, the classes that together
# hold that coverage (split conformal), and CONFIDENCE_COLUMN, the level asked; SET_COVERAGE_PARAM "per_class"
# holds it for each true class (Mondrian) instead of on average. 0: no sets.
CONFIDENCE_PARAM = "confidence"
SET_COVERAGE_PARAM = "set_coverage"
SET_COVERAGES = ("marginal", "per_class")
PREDICTION_SET_COLUMN = "prediction_set"
CONFIDENCE_COLUMN = "confidence"
