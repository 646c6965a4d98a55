"""The benchmark's BentoML peer (bench/bentoml_peer.py runs it in BentoML's own venv): the fitted pipeline
behind BentoML's adaptive batching. Typed rows in (``{"records": [{...}, ...]}``), class probabilities out,
a list a row. Imports nothing of the project: that venv has only BentoML and the pipeline's libraries."""

from __future__ import annotations

from typing import Any

import bentoml
import pandas as pd
import skops.io
from pydantic import BaseModel


class Arguments(BaseModel):  # `bentoml serve --arg-file`, written by bench/bentoml_peer.py
    pipeline: str  # a skops file
    trusted_types: list[str]  # the types skops may load beyond its defaults (pyfunc.pipeline.TRUSTED_TYPES)
    workers: int


ARGUMENTS = bentoml.use_arguments(Arguments)


@bentoml.service(workers=ARGUMENTS.workers)
class Classifier:
    def __init__(self) -> None:
        self.pipeline = skops.io.load(ARGUMENTS.pipeline, trusted=ARGUMENTS.trusted_types)
        # One thread a prediction, as the benchmark's other servers: n_jobs=-1 costs ~3x a row (bench/run.py).
        forest = self.pipeline.named_steps["forest"]
        if hasattr(forest, "n_jobs"):
            forest.n_jobs = 1

    # BentoML's batching defaults (up to 100 rows a batch, 60 s of latency before it refuses): none tuned.
    # A list of records, not a pd.DataFrame parameter: BentoML 1.4.40 counts a DataFrame's batch size as its
    # shape (a tuple) and its batcher fails on the first request.
    @bentoml.api(batchable=True)
    def predict(self, records: list[dict[str, Any]]) -> list[list[float]]:
        return self.pipeline.predict_proba(pd.DataFrame(records)).tolist()
