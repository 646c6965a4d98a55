"""The search space of ``tune``: each family's candidates, and the first trial being what ``train`` fits."""

from __future__ import annotations

import optuna
import pytest

from contract.params import MODEL_TYPES, ForestParams
from steps.tune import candidate, defaults


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_the_first_trial_of_a_family_is_what_train_fits_in_it(model_type):
    trained = candidate(optuna.trial.FixedTrial(defaults(model_type)), 42, MODEL_TYPES)
    expected = ForestParams(model_type=model_type, n_jobs=1 if model_type != "hist_gradient_boosting" else -1)
    assert trained == expected


def test_a_study_samples_every_family_with_only_its_own_parameters():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(30):
        trial = study.ask()
        forest = candidate(trial, 7, MODEL_TYPES)
        study.tell(trial, 0.0)
        seen.setdefault(forest.model_type, set()).update(trial.params)
        assert forest.random_state == 7
    assert set(seen) == set(MODEL_TYPES)
    assert {"learning_rate", "max_iter", "max_leaf_nodes", "l2_regularization"} <= seen["hist_gradient_boosting"]
    assert not {"learning_rate", "max_iter"} & seen["random_forest"]
    assert not {"n_estimators", "max_features"} & seen["hist_gradient_boosting"]
