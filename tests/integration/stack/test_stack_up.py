"""The README's stack-up path, and every served version running the code logged with it.

The tests work on a copy of the project, driven with ``make`` as a user would:
``make up`` trains, promotes and serves the default model, ``make down`` stops
everything. Run with ``SERVE_ALIAS=prod``: the serving alias is a setting, and a
stage transition to Production through the gateway moves it (the one registry
policy). Then the copy's ``pyfunc`` is made unimportable (a version trained before
must still serve exactly as before), and patched to mark every answer (a version
trained with the patch answers with the mark, one trained before answers without
it, side by side and across hot swaps both ways): the checkout's code never reaches
a version that was not trained with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runtime.processes import tool_env
from stack.local import port_in_use
from tests.conftest import PROJECT_DIR, census_rows, listen_port
from tests.integration.helpers import answers, wait_for

pytestmark = pytest.mark.integration

MODEL = "census-income-classifier"  # what `make up` trains and serves
ALIAS = "prod"
RECORDS = census_rows(1580).tail(30).drop(columns=["income"]).to_dict(orient="records")
MARK = ("served_code", "patched")
COPY_IGNORED = shutil.ignore_patterns(".venv", ".git", ".stack", "mlruns", "mlflow.db", "__pycache__",
                                      ".pytest_cache", ".import_linter_cache", "results")


class Copy:
    """A copy of the project with its own stack, driven with `make` like a user would."""

    def __init__(self, root: Path):
        self.dir = root / "project"
        shutil.copytree(PROJECT_DIR, self.dir, ignore=COPY_IGNORED, copy_function=shutil.copy2)
        (self.dir / ".venv").symlink_to(Path(sys.prefix))  # the venv the tests run in: no second install
        ports = {name: str(listen_port()) for name in ("GATEWAY_PORT", "MLFLOW_PORT", "MODEL_SERVER_PORT")}
        inherited = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
        self.ports = [int(port) for port in ports.values()]
        self.env = {**{k: v for k, v in os.environ.items() if k not in inherited},
                    "STACK_DIR": str(root / "stack"), "REGISTRY_POLL_SECONDS": "0.5",
                    "MODEL_SERVER_DRAIN_SECONDS": "1", "SERVE_ALIAS": ALIAS, **ports}
        self.gateway = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
        self.model_server = f"http://127.0.0.1:{ports['MODEL_SERVER_PORT']}"
        self.tracking_uri = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"

    def make(self, target: str, timeout: float = 900, succeeds: bool = True, **env: str) -> str:
        done = subprocess.run(["make", target], cwd=self.dir, env={**self.env, **env}, capture_output=True,
                              text=True, timeout=timeout)
        assert (done.returncode == 0) == succeeds, f"make {target}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout if succeeds else done.stderr

    def edit(self, relative: str, old: str, new: str) -> None:
        path = self.dir / relative
        text = path.read_text()
        assert old in text, f"{relative} no longer has {old!r}: update this test"
        path.write_text(text.replace(old, new, 1))


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Copy]:
    project = Copy(tmp_path_factory.mktemp("isolation"))
    try:
        yield project
    finally:
        subprocess.run(["make", "down"], cwd=project.dir, env=project.env, capture_output=True, timeout=120)


def predict(copy: Copy) -> dict:
    answer = httpx.post(f"{copy.gateway}/predict", json={"records": RECORDS}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def invoke(copy: Copy, path: str = "/invocations") -> httpx.Response:
    return httpx.post(f"{copy.model_server}{path}", json={"dataframe_records": RECORDS[:3]}, timeout=60)


def marked(answer: httpx.Response) -> bool:
    rows = answer.json()["predictions"]
    return all(row.get(MARK[0]) == MARK[1] for row in rows)


def test_make_up_serves_the_default_model_and_make_down_stops_everything(copy):
    up = copy.make("up")
    assert f"{copy.gateway}/docs" in up and f"promoted {MODEL} version 1" in up
    answer = predict(copy)
    assert answer["model"] == {"name": MODEL, "version": "1"} and len(answer["predictions"]) == len(RECORDS)
    assert httpx.get(f"{copy.gateway}/docs").status_code == 200
    assert "training" not in copy.make("up")  # idempotent: nothing retrained
    assert httpx.get(f"{copy.gateway}/models/{MODEL}").json()["aliases"] == {ALIAS: "1"}
    # other settings on a running stack: refused, naming them and how to apply them; the stack unchanged
    refused = copy.make("up", succeeds=False, MODEL_NAME="churn", GATEWAY_API_TOKEN="s3cret-t0ken")
    assert f"MODEL_NAME (running: {MODEL}, asked: churn)" in refused and "make down" in refused, refused
    assert "GATEWAY_API_TOKEN" in refused and "s3cret-t0ken" not in refused, refused
    assert predict(copy)["model"] == {"name": MODEL, "version": "1"}
    assert "stopped: gateway, model-server, mlflow" in copy.make("down")
    assert not any(port_in_use("127.0.0.1", port) for port in copy.ports)


def test_versions_serve_exactly_as_before_when_the_checkouts_pyfunc_cannot_be_imported(copy):
    copy.make("up")
    before = predict(copy)
    copy.make("down")
    copy.edit("pyfunc/__init__.py", '"""What is logged', 'raise ImportError("the checkout\'s pyfunc was imported")\n"""What is logged')

    assert "training" not in copy.make("up")  # version 1 is registered: nothing to train
    after = predict(copy)
    assert after["model"] == before["model"] and answers(after["predictions"]) == answers(before["predictions"])
    worker_log = (Path(copy.env["STACK_DIR"]) / "logs" / f"fast-{MODEL}-v1.log").read_text()
    assert "model code: " in worker_log and str(copy.dir / "pyfunc") not in worker_log


def test_two_versions_with_different_code_serve_side_by_side_and_across_swaps(copy, tmp_path):
    copy.edit("pyfunc/__init__.py", 'raise ImportError("the checkout\'s pyfunc was imported")\n', "")
    # the checkout's code now marks every answer; a version trained from it carries the mark with it
    rows = "map(dict, map(zip, repeat(keys), zip(*columns)))"
    copy.edit("pyfunc/model.py", f"    return list({rows})\n",
              f"    return [{{**row, {MARK[0]!r}: {MARK[1]!r}}} for row in {rows}]\n")
    data = tmp_path / "small.csv"
    census_rows(1500).to_csv(data, index=False)
    trained = subprocess.run(
        ["mlflow", "run", str(copy.dir), "--env-manager", "local", "--experiment-name", "isolation",
         "-P", f"data_path={data}", "-P", f"model_name={MODEL}", "-P", "n_estimators=10"],
        cwd=copy.dir, env=tool_env(copy.env, MLFLOW_TRACKING_URI=copy.tracking_uri),
        capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]

    # side by side: version 1 (served) and version 2 (asked for by number), each with its own code
    assert not marked(invoke(copy))
    second = wait_for(lambda: (r := invoke(copy, f"/models/{MODEL}/versions/2/invocations")).status_code == 200
                      and r, 120, "version 2 loaded")
    assert second.headers["X-Model-Version"] == "2" and marked(second)
    first = invoke(copy)
    assert first.headers["X-Model-Version"] == "1" and not marked(first)  # the checkout's patch did not reach it
    loaded = httpx.get(f"{copy.model_server}/status").json()["loaded"]
    assert sorted(b["version"] for b in loaded) == ["1", "2"] and len({b["pid"] for b in loaded}) == 2

    # hot swaps, both ways: each version keeps its own code
    token = {}
    promoted = httpx.put(f"{copy.gateway}/models/{MODEL}/aliases/{ALIAS}", json={"version": "2"}, headers=token)
    assert promoted.status_code == 200, promoted.text
    swapped = wait_for(lambda: (r := invoke(copy)).headers.get("X-Model-Version") == "2" and r, 60, "swap to 2")
    assert marked(swapped)
    for stage in ("Staging", "Production"):  # version 1 was Archived when 2 replaced it
        moved = httpx.post(f"{copy.gateway}/models/{MODEL}/versions/1/stage", json={"stage": stage}, headers=token)
        assert moved.status_code == 200, moved.text
    assert moved.json()["aliases"] == [ALIAS]  # the transition to Production moved the serving alias
    back = wait_for(lambda: (r := invoke(copy)).headers.get("X-Model-Version") == "1" and r, 60, "swap back to 1")
    assert not marked(back)
    stages = {v["version"]: v["stage"] for v in httpx.get(f"{copy.gateway}/models/{MODEL}").json()["versions"]}
    assert stages == {"1": "Production", "2": "Archived"}
