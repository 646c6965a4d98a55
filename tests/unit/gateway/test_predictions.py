"""The gateway's answer rows, made from the model server's (label, probability, proba_<class>)."""

import pytest

from gateway.routes.predict import to_predictions


def test_each_row_keeps_its_id_label_probability_and_every_class_in_the_model_servers_order():
    rows = [{"label": "b", "probability": 0.5, "proba_a": 0.25, "proba_b": 0.5, "proba_c": 0.25},
            {"label": "a", "probability": 0.75, "proba_a": 0.75, "proba_b": 0.125, "proba_c": 0.125}]
    answered = to_predictions(rows, ["k-0", "k-1"])
    assert answered == [
        {"id": "k-0", "label": "b", "probability": 0.5, "probabilities": {"a": 0.25, "b": 0.5, "c": 0.25}},
        {"id": "k-1", "label": "a", "probability": 0.75, "probabilities": {"a": 0.75, "b": 0.125, "c": 0.125}},
    ]
    assert list(answered[0]["probabilities"]) == ["a", "b", "c"]


def test_one_class_and_no_rows():
    assert to_predictions([{"label": "x", "probability": 1.0, "proba_x": 1.0}], ["k-0"]) == \
        [{"id": "k-0", "label": "x", "probability": 1.0, "probabilities": {"x": 1.0}}]
    assert to_predictions([], []) == []
    assert to_predictions([{"label": "x", "probability": 1.0}], ["k-0"]) == \
        [{"id": "k-0", "label": "x", "probability": 1.0, "probabilities": {}}]  # a model that gives none


def test_a_row_without_a_class_the_first_row_has_is_refused_not_answered_short():
    with pytest.raises(KeyError):
        to_predictions([{"label": "a", "probability": 1.0, "proba_a": 1.0, "proba_b": 0.0},
                        {"label": "a", "probability": 1.0, "proba_a": 1.0}], ["k-0", "k-1"])
