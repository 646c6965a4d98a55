"""The spare worker (model_server.worker --spare): started ahead, warm, it loads the version it is handed on
its stdin, writes to that version's log, and answers on the socket it was given; one that is never handed a
version leaves when its stdin closes. A real worker process and a real MLflow model saved from code."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from pathlib import Path

import mlflow.pyfunc
import orjson
from hypothesis import given
from hypothesis import strategies as st

from contract.settings import PROJECT_DIR
from model_server.backends import WorkerBackend
from model_server.worker import Assignment

MODEL_CODE = '''
import mlflow


class Rows(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return [{"rows": len(model_input)}]


mlflow.models.set_model(Rows())
'''


def spare(log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "model_server.worker", "--spare", "--processes", "1"],
                            cwd=PROJECT_DIR, stdin=subprocess.PIPE, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@given(uri=st.text(min_size=1).filter(str.strip), socket=st.text(min_size=1).filter(lambda s: "\x00" not in s),
       logged=st.booleans())
def test_an_assignment_is_read_back_as_written_whatever_its_text(uri, socket, logged):
    written = Assignment(uri, Path(socket), Path(socket + ".log") if logged else None)
    line = written.line()
    assert line.count(b"\n") == 1  # one line, whatever the names hold
    read = Assignment.read(io.BytesIO(line))
    assert read == Assignment(uri, Path(socket), written.log)


def test_a_closed_stdin_is_no_assignment():
    assert Assignment.read(io.BytesIO(b"")) is None


def test_a_spare_loads_the_version_it_is_handed_and_answers_for_it(tmp_path):
    code = tmp_path / "rows_model.py"
    code.write_text(MODEL_CODE)
    mlflow.pyfunc.save_model(str(tmp_path / "model"), python_model=str(code), pip_requirements=[])
    process = spare(tmp_path / "spare.log")
    try:
        time.sleep(1)
        assert process.poll() is None  # waiting for its version, not exited
        socket_path, log = tmp_path / "w.sock", tmp_path / "version.log"
        assert process.stdin is not None
        process.stdin.write(Assignment(str(tmp_path / "model"), socket_path, log).line())
        process.stdin.close()
        backend = WorkerBackend("m", "1", process, log, lambda pid: None, socket_path=socket_path)

        async def answered() -> bytes:
            for _ in range(600):
                if await backend.ready():
                    reply = await backend.invoke(orjson.dumps({"dataframe_records": [{"a": 1}, {"a": 2}]}),
                                                 "application/json")
                    await backend.close()
                    return reply.body
                assert process.poll() is None, log.read_text()
                await asyncio.sleep(0.1)
            raise AssertionError("the spare did not answer within 60 s")

        assert orjson.loads(asyncio.run(answered())) == {"predictions": [{"rows": 2}]}
        text = log.read_text()
        assert "a spare warmed in" in text and "loaded" in text  # its lines went to the version's log
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_a_spare_never_handed_a_version_leaves_when_its_stdin_closes(tmp_path):
    process = spare(tmp_path / "spare.log")
    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(timeout=120) == 0
