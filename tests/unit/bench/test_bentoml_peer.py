"""BentoML's venv for the benchmark: what it pins, when it is reused, and a start that fails early."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from bench.bentoml_peer import (
    COMPLETE,
    STARTUP_FAILED,
    BentoMLPeerError,
    is_complete,
    our_versions,
    ready,
    requirements,
)


@pytest.mark.parametrize("name", ["scikit-learn", "numpy", "pandas", "skops"])
def test_the_pipeline_libraries_are_pinned_to_ours(name):
    # another version there could load the pipeline differently, or refuse it
    assert f"{name}=={importlib.metadata.version(name)}" in requirements(our_versions())


def test_bentoml_is_the_1_4_series():
    assert "bentoml>=1.4,<1.5" in requirements(our_versions())


def completed_venv(path, wanted):
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "bentoml").write_text("")
    (path / COMPLETE).write_text(json.dumps(wanted))


def test_a_venv_completed_with_the_same_requirements_is_reused(tmp_path):
    wanted = requirements(our_versions())
    completed_venv(tmp_path, wanted)
    assert is_complete(tmp_path, wanted)


def test_a_venv_made_for_other_versions_is_not_reused(tmp_path):
    wanted = requirements(our_versions())
    completed_venv(tmp_path, [*wanted[:-1], "skops==0.0.1"])
    assert not is_complete(tmp_path, wanted)


def test_a_half_made_venv_is_not_reused(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "bentoml").write_text("")  # pip stopped before the marker was written
    assert not is_complete(tmp_path, requirements(our_versions()))


def test_a_worker_that_failed_to_start_ends_the_wait(tmp_path):
    log = tmp_path / "bentoml.log"
    log.write_text(f"[ERROR] [entry_service:Classifier:1] {STARTUP_FAILED}. Exiting.\n")
    with pytest.raises(BentoMLPeerError, match="failed to start"):
        ready("http://127.0.0.1:9/readyz", log)()  # nothing listens there: the log alone decides
