"""What the service processes load: no model code, nor the libraries only model code needs.

import-linter (``.importlinter``, run by ``make test``) checks the project's own
imports; this checks what a real process of each service ends up importing,
third-party libraries included, since a service that loads scikit-learn or
numba pays seconds of start-up and their memory for nothing.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import PROJECT_DIR

MODEL_ONLY = ("pyfunc", "steps", "sklearn", "numba", "matplotlib", "skops")


@pytest.mark.parametrize("module", ["gateway.app", "model_server.app", "model_server.worker", "stack.local"])
def test_a_service_imports_no_model_code(module):
    probe = f"import sys, {module}; print(','.join(m for m in {MODEL_ONLY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{module} loads {done.stdout.strip()}"
