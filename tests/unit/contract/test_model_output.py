"""The gateway's copy of the model's output names equals the model's own (pyfunc/model.py)."""

from contract import model_output
from pyfunc import model


def test_the_services_read_the_names_the_model_writes():
    for name in ("EXPLAIN_PARAM", "EXPLAIN_CLASSES_PARAM", "EXPLAIN_CLASSES", "BASE_VALUE_COLUMN", "CONTRIB_PREFIX", "EXPLAINS_COLUMN",
                 "EXPLANATIONS_COLUMN", "CONFIDENCE_PARAM", "SET_COVERAGE_PARAM", "SET_COVERAGES", "PREDICTION_SET_COLUMN",
                 "CONFIDENCE_COLUMN"):
        assert getattr(model_output, name) == getattr(model, name), name
    assert model.proba_column("x") == f"{model_output.PROBA_PREFIX}x"
