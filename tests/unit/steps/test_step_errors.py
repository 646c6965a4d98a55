"""A failed step records why on its run (the ``error`` tag a job shows), whatever failed, in bounded size."""

from __future__ import annotations

import mlflow
import pytest

from contract.errors import DataError
from contract.names import TAG_ERROR
from steps.runs import ERROR_TAG_LENGTH, step_run


def failed_run(error: BaseException, raised: type[BaseException]) -> mlflow.entities.Run:
    with pytest.raises(raised):
        with step_run("monitor") as run:
            raise error
    return mlflow.get_run(run.info.run_id)


def test_an_unexpected_failure_is_tagged_with_its_type_and_first_line(tracking):
    run = failed_run(FileNotFoundError(2, "No such file or directory", "figures/debt/income.png"), FileNotFoundError)
    assert run.info.status == "FAILED"
    assert run.data.tags[TAG_ERROR] == ("FileNotFoundError: [Errno 2] No such file or directory: "
                                        "'figures/debt/income.png'")


def test_an_error_quoting_any_amount_of_data_fits_in_a_tag(tracking):
    columns = ", ".join(f"column {i} with a long name" for i in range(2000))
    run = failed_run(DataError(f"every one of these columns is empty: {columns}"), SystemExit)
    tag = run.data.tags[TAG_ERROR]
    assert tag.startswith("every one of these columns is empty: column 0") and len(tag) == ERROR_TAG_LENGTH
