"""BentoML's adaptive batching as a peer in the benchmark: its own virtual environment, the same fitted pipeline.

BentoML runs only in its own venv (``ensure_venv``), never imported here: its dependencies would pin ours.
That venv gets the same scikit-learn, numpy, pandas, scipy and skops as this one, so the pipeline file loads and
predicts identically there. ``start_service`` runs ``bench/bentoml_service/service.py`` on that file.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.processes import stop_process_group
from stack.local import http_ok, wait_until

SERVICE_DIR = Path(__file__).resolve().parent / "bentoml_service"
BENTOML = "bentoml>=1.4,<1.5"  # pip takes the newest 1.4.x that installs beside the pins below
# What the pipeline file needs to load and predict as it does here: these exact versions, read from this venv.
SAME_AS_OURS = ("scikit-learn", "numpy", "pandas", "scipy", "skops")
COMPLETE = "bench-complete.json"  # in the venv, written last: the requirements it holds
WORKERS = 2  # one per core of the benchmark machine (2 cores)
READY_SECONDS = 180
# uvicorn's line when a worker's service fails to initialise (a bad pipeline file, say): BentoML then restarts
# the worker forever instead of exiting, so the log is the only early sign.
STARTUP_FAILED = "Application startup failed"


class BentoMLPeerError(RuntimeError):
    pass


def requirements(versions: dict[str, str]) -> list[str]:
    """What BentoML's venv installs: BentoML, and each of SAME_AS_OURS at its version in ``versions``."""
    return [BENTOML] + [f"{name}=={versions[name]}" for name in SAME_AS_OURS]


def our_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in SAME_AS_OURS}


def is_complete(path: Path, wanted: list[str]) -> bool:
    """Whether the venv at ``path`` was completed with exactly ``wanted`` (a half-made one has no marker)."""
    marker = path / COMPLETE
    try:
        return json.loads(marker.read_text()) == wanted and (path / "bin" / "bentoml").is_file()
    except (OSError, ValueError):
        return False


def ensure_venv(path: Path) -> Path:
    """A venv at ``path`` with BentoML and our versions of the pipeline's libraries, made once and reused while
    those versions stay the same. Returns its ``bin`` folder. pip's output goes to ``path``.log."""
    wanted = requirements(our_versions())
    if is_complete(path, wanted):
        return path / "bin"
    log = path.with_name(path.name + ".log")
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"installing BentoML in {path} (once; pip output in {log}) ...", flush=True)
    with log.open("wb") as out:
        # sys.executable is this venv's python: `-m venv` bases the new venv on the same Python installation.
        steps = [[sys.executable, "-m", "venv", "--clear", str(path)],
                 [str(path / "bin" / "python"), "-m", "pip", "install", "--no-input", *wanted]]
        for command in steps:
            out.write(f"$ {' '.join(command)}\n".encode())
            out.flush()
            if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode:
                raise BentoMLPeerError(f"could not install {' '.join(wanted)} in {path}: see {log}")
    (path / COMPLETE).write_text(json.dumps(wanted))
    return path / "bin"


@dataclass
class BentoMLService:
    process: subprocess.Popen
    url: str  # the API: POST {"records": [...]} (typed rows) -> probabilities, a list a row
    log: Path


def start_service(venv_bin: Path, pipeline: Path, trusted_types: list[str], port: int, log: Path,
                  workers: int = WORKERS) -> BentoMLService:
    """BentoML serving the skops ``pipeline`` (loaded with ``trusted_types``) on 127.0.0.1:``port``, ready."""
    arguments = log.with_suffix(".args.json")  # read by the service (bentoml.use_arguments); JSON is YAML
    arguments.write_text(json.dumps({"pipeline": str(pipeline), "trusted_types": trusted_types, "workers": workers}))
    # BentoML's own store and usage reports: beside the log, and off
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
           "BENTOML_HOME": str(log.parent / "bentoml-home"), "BENTOML_DO_NOT_TRACK": "true"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(venv_bin / "bentoml"), "serve", "service:Classifier", "--working-dir", str(SERVICE_DIR),
             "--host", "127.0.0.1", "--port", str(port), "--arg-file", str(arguments)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(ready(f"{base}/readyz", log), READY_SECONDS, "BentoML service", process, log)
    except Exception:
        stop_service(process)
        raise
    return BentoMLService(process, f"{base}/predict", log)


def ready(url: str, log: Path) -> Callable[[], bool]:
    """A readiness check for ``wait_until`` that fails at once when the log shows a worker failed to start."""
    answers = http_ok(url)

    def check() -> bool:
        if STARTUP_FAILED in log.read_text(errors="replace"):
            raise BentoMLPeerError(f"the BentoML service failed to start: see {log}")
        return answers()

    return check


def stop_service(process: subprocess.Popen) -> None:
    """Stop the whole process group (BentoML's arbiter and its workers)."""
    stop_process_group(process.pid, timeout=30)
    process.poll()
