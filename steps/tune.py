"""``tune`` step: search the model family and its hyperparameters, then train and register the best candidate.

``preprocess`` runs first as a child run. Each candidate is scored by
stratified cross-validation on the training split only (the test split stays
untouched) and logged as a child run of this one. Optuna's TPE sampler picks
the candidates; trials run in parallel threads, one per core, each model on
one core (forests with ``n_jobs=1``, gradient boosting's OpenMP threads limited
to one), so the machine is never oversubscribed. The best candidate then goes
through the ``train`` step, unchanged: refit on the whole training split,
scored once on the test split, logged, registered and (with ``promote``)
compared with the champion, exactly like any trained version.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import replace

import mlflow
import numpy as np
import optuna
from mlflow.entities import Metric, Param, RunStatus
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from contract.errors import DataError, ProjectError
from contract.names import TAG_TUNED_PARAMS, TAG_TUNING_RUN_ID
from contract.params import (
    FORESTS,
    DataParams,
    ForestParams,
    ModelParams,
    TuneParams,
    format_value,
    parse_cli,
    parse_params,
    to_arguments,
)
from pyfunc.cleaning import clean_raw_frame, infer_feature_schema
from pyfunc.pipeline import build_pipeline, fits_dense
from steps import evaluate
from steps.runs import exit_when_done, log_params_once, next_steps, record_outcome, run_child, step_run
from steps.splits import SPLITS_DIR, Splits, load_splits, prepare_labels

# The search space, as MLproject strings parsed by ForestParams' own parsers. Shared by the families (one
# name, one set of choices: Optuna keeps a parameter's distribution across trials)...
SPACE = {
    "max_depth": ("none", "8", "16", "32"),
    "class_weight": ("none", "balanced"),
}
# ... and each family's own
FOREST_SPACE = {"max_features": ("sqrt", "log2", "0.3", "0.5")}


def defaults(model_type: str) -> dict[str, object]:
    """What `train` would fit in this family, as the searched parameters: tuning starts from it."""
    searched = {*SPACE, "min_samples_leaf", "model_type"} | (
        {*FOREST_SPACE, "n_estimators"} if model_type in FORESTS else
        {"learning_rate", "max_iter", "max_leaf_nodes", "l2_regularization"})
    train = ForestParams(model_type=model_type)
    return {name: format_value(getattr(train, name)) if name in SPACE or name in FOREST_SPACE else getattr(train, name)
            for name in searched}


def candidate(trial: optuna.Trial, random_state: int, model_types: Sequence[str]) -> ForestParams:
    # the family first: each trial's run records it with the rest
    model_type = trial.suggest_categorical("model_type", list(model_types))
    raw = {
        "model_type": model_type,
        **{name: trial.suggest_categorical(name, options) for name, options in SPACE.items()},
        "random_state": str(random_state),
    }
    if model_type in FORESTS:
        raw.update({
            "n_estimators": str(trial.suggest_int("n_estimators", 50, 300, step=50)),
            "min_samples_leaf": str(trial.suggest_int("min_samples_leaf", 1, 20, log=True)),
            **{name: trial.suggest_categorical(name, options) for name, options in FOREST_SPACE.items()},
            "n_jobs": "1",  # one core a trial; trials run side by side
        })
    else:  # gradient boosting: early stopping on, so max_iter is a ceiling
        raw.update({
            "learning_rate": str(trial.suggest_float("learning_rate", 0.02, 0.3, log=True)),
            "max_iter": str(trial.suggest_int("max_iter", 100, 500, step=100)),
            "max_leaf_nodes": str(trial.suggest_int("max_leaf_nodes", 8, 128, log=True)),
            "l2_regularization": str(trial.suggest_float("l2_regularization", 0.0, 5.0)),
            "min_samples_leaf": str(trial.suggest_int("min_samples_leaf", 1, 100, log=True)),
        })
    return parse_params(ForestParams, raw)


class CrossValidation:
    """Scores a candidate on stratified folds of the training split."""

    def __init__(self, splits: Splits, target: str, model: ModelParams, folds: int, random_state: int):
        features = splits.meta.features
        self.schema = infer_feature_schema(splits.train[features], splits.meta.na_values)
        self.x = clean_raw_frame(splits.train, self.schema)
        self.dense = fits_dense(self.x, self.schema)
        labels = prepare_labels(splits, target, model.positive_class)
        self.y, self.classes, self.positive = labels.train, labels.classes, labels.positive
        smallest = min(int(np.sum(self.y == c)) for c in self.classes)
        if smallest < folds:
            raise DataError(f"cv_folds={folds}: the rarest class has {smallest} training rows; use fewer folds")
        self.folds = list(StratifiedKFold(folds, shuffle=True, random_state=random_state).split(self.x, self.y))

    def score(self, forest: ForestParams) -> dict[str, list[float]]:
        scores: dict[str, list[float]] = {}
        for fit_rows, held_out in self.folds:
            pipeline = build_pipeline(self.schema, forest.sklearn_kwargs(), forest.model_type, self.dense)
            pipeline.fit(self.x.iloc[fit_rows], self.y[fit_rows])
            proba = pipeline.predict_proba(self.x.iloc[held_out])
            metrics = evaluate.classification_metrics(self.y[held_out], proba, pipeline.classes_, self.positive)
            for name, value in metrics.items():
                scores.setdefault(name, []).append(value)
        return scores


def progress_line(done: int, total: int, elapsed: float, best: float, metric: str,
                  timeout: float | None = None) -> str:
    """One line after each finished trial: the best score so far and the time left, estimated from the
    trials so far (wall time a trial, the parallel ones counted once) and capped by ``timeout``."""
    left = (total - done) * elapsed / done
    if timeout:
        left = min(left, max(0.0, timeout - elapsed))
    return (f"tune: trial {done}/{total} done in {elapsed:.0f} s, best cv {metric} {best:.4f}; "
            f"about {_duration(left)} left" if done < total else
            f"tune: {total} trials done in {_duration(elapsed)}, best cv {metric} {best:.4f}")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def search(cv: CrossValidation, metric: str, tune: TuneParams, random_state: int, parent_run_id: str,
           experiment_id: str) -> optuna.Study:
    client = mlflow.MlflowClient()

    def objective(trial: optuna.Trial) -> float:
        forest = candidate(trial, random_state, tune.model_types)
        # MlflowClient, not the fluent API: trials run in threads, each logs its own child run
        run = client.create_run(experiment_id, run_name=f"trial-{trial.number}",
                                tags={"mlflow.parentRunId": parent_run_id, "trial": str(trial.number)})
        try:
            scores = cv.score(forest)
        except Exception:
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        means = {f"cv_{name}": float(np.mean(values)) for name, values in scores.items()}
        means[f"cv_{metric}_std"] = float(np.std(scores[metric]))
        client.log_batch(run.info.run_id,
                         params=[Param(k, str(v)) for k, v in trial.params.items()],
                         metrics=[Metric(k, v, 0, 0) for k, v in means.items()])
        client.set_terminated(run.info.run_id)
        return means[f"cv_{metric}"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=random_state))
    # the first candidate is what `train` would fit (in the first family asked for): tuning starts from it
    study.enqueue_trial(defaults(tune.model_types[0]))
    parallel = max(1, min(os.cpu_count() or 1, tune.max_trials))
    started = time.monotonic()

    def report(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        if done:
            print(progress_line(done, tune.max_trials, time.monotonic() - started, study.best_value, metric,
                                tune.timeout_s or None), flush=True)

    # one core a trial: gradient boosting's OpenMP threads too (the limit is the process's, as the trials' threads)
    with threadpool_limits(limits=1, user_api="openmp"):
        study.optimize(objective, n_trials=tune.max_trials, timeout=tune.timeout_s or None, n_jobs=parallel,
                       callbacks=[report])
    return study


def main(argv: Sequence[str] | None = None) -> None:
    with step_run("tune") as tuning:
        data, model, tune = parse_cli(argv, DataParams, ModelParams, TuneParams)
        log_params_once(to_arguments(data, model, tune))
        experiment_id = tuning.info.experiment_id

        prepared = run_child("preprocess", to_arguments(data), experiment_id)
        splits_uri = f"{prepared.info.artifact_uri}/{SPLITS_DIR}"
        splits = load_splits(splits_uri)
        cv = CrossValidation(splits, splits.meta.target, model, tune.cv_folds, data.random_state)
        study = search(cv, model.metric, tune, data.random_state, tuning.info.run_id, experiment_id)
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not completed:
            raise ProjectError("no trial finished within timeout_s; raise it or lower max_trials")
        best = study.best_trial
        mlflow.log_metrics({f"best_cv_{model.metric}": best.value, "trials": len(completed)})

        # the winner, trained on all cores by the train step like any other version
        forest = replace(candidate(optuna.trial.FixedTrial(best.params), data.random_state, tune.model_types),
                         n_jobs=-1)  # (gradient boosting uses every core in any case)
        trained = run_child("train", {**to_arguments(forest, model), "splits_uri": splits_uri,
                                      "target": data.target}, experiment_id)
        version = record_outcome(prepared, trained, model.model_name)
        client = mlflow.MlflowClient()
        tuned = json.dumps(best.params, sort_keys=True)
        for key, value in {TAG_TUNING_RUN_ID: tuning.info.run_id, TAG_TUNED_PARAMS: tuned,
                           f"best_cv_{model.metric}": f"{best.value:.6f}"}.items():
            client.set_model_version_tag(model.model_name, version, key, value)
        mlflow.set_tag(TAG_TUNED_PARAMS, tuned)
        print(f"tune: {len(completed)} trials, best cv {model.metric} {best.value:.4f} with {tuned}; "
              f"{model.model_name} version {version} registered by run {trained.info.run_id}")
        print(next_steps(model.model_name, version), flush=True)


if __name__ == "__main__":
    exit_when_done(main)
