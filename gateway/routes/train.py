"""Training jobs: ``mlflow run`` of this project, queued and run one at a time."""

from __future__ import annotations

import itertools
from pathlib import Path
from urllib.parse import urlparse

from fastapi.concurrency import run_in_threadpool
from fastapi import APIRouter, Request, Depends, HTTPException, status
from fastapi.responses import JSONResponse

from contract.errors import DataError, ParameterError
from contract.params import closest
from contract.settings import Settings
from contract.tables import CSV_SUFFIXES, column_name, csv_header
from gateway.deps import Authenticated, CallerDep, EditsPerModel, Trains, JobsDep, SettingsDep
from gateway.jobs import TRAINING_ENTRY_POINTS, Job
from gateway.schemas import JobOut, TrainAccepted, TrainRequest, unprocessable

async def training_enabled(settings: SettingsDep) -> None:
    if not settings.training_enabled:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            detail="training is off on this gateway (GATEWAY_TRAINING=false); "
                                   "send /train to the trainer service")


router = APIRouter(prefix="/train", tags=["train"], dependencies=[Depends(training_enabled)],
                   responses={503: {"description": "training is off on this instance (GATEWAY_TRAINING=false)"}})


def resolve_data_path(raw: str, settings: Settings) -> str:
    """An allowed URI as given, or the real path of a CSV file inside one of the data roots.

    Symlinks and ``..`` are resolved before the check, so nothing outside the
    roots can be reached through them.
    """
    if "\x00" in raw:
        raise unprocessable(["body", "data_path"], "must not contain NUL characters")
    scheme = urlparse(raw).scheme.lower()
    if scheme and len(scheme) > 1:
        if scheme not in settings.allowed_uri_schemes:
            allowed = ", ".join(settings.allowed_uri_schemes) or "none"
            raise unprocessable(["body", "data_path"], f"URI scheme '{scheme}' is not allowed (allowed: {allowed})")
        return raw
    roots = [root.resolve() for root in settings.data_roots]
    candidates = [Path(raw).resolve()] if Path(raw).is_absolute() else [(r / raw).resolve() for r in roots]
    inside = [path for path in candidates if any(path.is_relative_to(root) for root in roots)]
    for path in inside:
        if path.is_file():
            if not path.name.lower().endswith(CSV_SUFFIXES):
                raise unprocessable(["body", "data_path"], "expected a .csv or .csv.gz file")
            return str(path)
    named = f"the data roots (GATEWAY_DATA_ROOTS: {', '.join(map(str, settings.data_roots))})"
    if not inside:  # whether such a file exists out there is nobody's business: the same answer either way
        raise unprocessable(["body", "data_path"], f"outside {named}: copy the file into one of them, or add "
                                                   "its folder to GATEWAY_DATA_ROOTS")
    guess = closest(raw, sorted({str(p.relative_to(r)) for r in roots if r.is_dir() for p in csv_files(r)}))
    raise unprocessable(["body", "data_path"], f"no file {raw!r} under {named}"
                                               + (f"; did you mean {guess!r}?" if guess else ""))


def csv_files(root: Path, limit: int = 10_000) -> list[Path]:
    """The CSV files in a data root and its folders, one level down: a suggestion is not worth a long walk."""
    found = (p for pattern in ("*", "*/*") for p in root.glob(pattern)
             if p.name.lower().endswith(CSV_SUFFIXES) and p.is_file())
    return list(itertools.islice(found, limit))


def check_target(data_path: str, target: str) -> None:
    """For a local file: the target must be one of its columns (its header is all that is read).

    Caught here, a typo or a broken file costs the caller a 422 instead of a job
    that fails a few seconds later. Data behind a URI is checked by the run.
    """
    path = Path(data_path)
    if not path.is_absolute():
        return
    try:
        columns = csv_header(path)
    except (DataError, ParameterError) as err:
        # named as the caller knows it: the file name, not where the gateway keeps it
        raise unprocessable(["body", "data_path"], str(err).removeprefix("data_path: ").replace(str(path), path.name)) from None
    if column_name(target) not in columns:
        shown = ", ".join(repr(c) for c in columns[:20]) + (", ..." if len(columns) > 20 else "")
        raise unprocessable(["body", "target"], f"{target!r} is not a column of {path.name} (columns: {shown})")


def job_out(job: Job) -> JobOut:
    return JobOut(job_id=job.id, status=job.status, model_name=job.model_name, parameters=job.parameters,
                  created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
                  run_id=job.run_id, model_version=job.model_version, metrics=job.metrics,
                  error=job.error, log_tail=job.log_tail, mode="tune" if job.entry_point == "tune" else "train",
                  promotion=job.promotion, requested_by=job.requested_by)


def found(job: Job | None, job_id: str, entry_points: tuple[str, ...] = TRAINING_ENTRY_POINTS,
          kind: str = "training") -> Job:
    if job is None or job.entry_point not in entry_points:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no {kind} job '{job_id}'")
    return job


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=TrainAccepted,
             dependencies=[Trains], responses={401: {"description": "token required"}})
def start_training(body: TrainRequest, settings: SettingsDep, jobs: JobsDep, caller: CallerDep) -> JSONResponse:
    """Queue ``mlflow run`` of this project with these parameters; poll the returned job."""
    parameters = body.mlproject_parameters()
    parameters["data_path"] = resolve_data_path(body.data_path, settings)
    check_target(parameters["data_path"], body.target)
    parameters["model_name"] = body.model_name or settings.model_name
    if body.include_feedback:
        if settings.inference_log is None:
            raise unprocessable(["body", "include_feedback"], "the inference log is off (INFERENCE_LOG_URI=off)")
        # the log's URL reaches the job through its environment (INFERENCE_LOG_URI), never a command line
        parameters["feedback_from"] = body.feedback_from or parameters["model_name"]
    job = jobs.submit(parameters, parameters["model_name"], entry_point="tune" if body.mode == "tune" else "main",
                      caller=caller)
    location = f"/train/{job.id}"
    accepted = TrainAccepted(job_id=job.id, status=job.status, location=location)
    return JSONResponse(accepted.model_dump(), status_code=202, headers={"Location": location})


@router.get("", response_model=list[JobOut], dependencies=[Authenticated])
def list_jobs(jobs: JobsDep) -> list[JobOut]:
    """The newest 100 jobs first."""
    return [job_out(j) for j in jobs.store.list(TRAINING_ENTRY_POINTS)]


@router.get("/{job_id}", response_model=JobOut, dependencies=[Authenticated], responses={404: {"description": "unknown job"}})
def get_job(job_id: str, jobs: JobsDep) -> JobOut:
    return job_out(found(jobs.store.get(job_id), job_id))


@router.delete("/{job_id}", response_model=JobOut, dependencies=[EditsPerModel],
               responses={401: {"description": "token required"}, 404: {"description": "unknown job"},
                          409: {"description": "job already ended"}})
async def cancel_job(job_id: str, jobs: JobsDep, request: Request) -> JobOut:
    """Cancel a queued or running job (its ``mlflow run`` process group is stopped)."""
    job = found(jobs.store.get(job_id), job_id)
    # as training it: EDIT on its model (the token, with GATEWAY_AUTH=token)
    await request.app.state.authorizer.check(request.headers.get("authorization"), job.model_name, "EDIT")
    if job.status not in ("queued", "running"):
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job '{job_id}' already {job.status}")
    return job_out(found(await run_in_threadpool(jobs.cancel, job_id), job_id))
