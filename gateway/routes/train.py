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
from gateway.auth import Caller
from gateway.deps import Authenticated, CallerDep, EditsPerModel, JobsDep, SettingsDep, Trains
from gateway.jobs import TRAINING_ENTRY_POINTS, Job, TrainingJobRunner
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


async def check_not_claimed(model_name: str, caller: Caller, jobs: TrainingJobRunner) -> None:
    """A model that does not exist yet is its first trainer's to create (MLflow makes its creator its manager):
    while another's job is creating it, nobody else may (their job would write to its experiment meanwhile)."""
    others = [j for j in await run_in_threadpool(jobs.store.active, model_name) if j.requested_by != caller.username]
    if others:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail=f"registered model {model_name!r} is being created by another user's job "
                                   f"({others[0].id}); once it exists, its manager can grant you EDIT on it")


def job_out(job: Job) -> JobOut:
    return JobOut(job_id=job.id, status=job.status, model_name=job.model_name, parameters=job.parameters,
                  created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
                  run_id=job.run_id, model_version=job.model_version, metrics=job.metrics,
                  error=job.error, log_tail=job.log_tail, mode="tune" if job.entry_point == "tune" else "train",
                  promotion=job.promotion, requested_by=job.requested_by)


async def readable(request: Request, jobs: list[Job], limit: int = 100) -> list[Job]:
    """The first ``limit`` of ``jobs`` the caller asked for or whose model they may READ: a job's parameters
    and log name its data and can quote its values."""
    authorizer, header = request.app.state.authorizer, request.headers.get("authorization")
    caller: Caller | None = getattr(request.state, "caller", None)
    allowed = {name: await authorizer.allows(header, name, "READ") for name in {j.model_name for j in jobs}}
    return [j for j in jobs if allowed[j.model_name] or (caller and j.requested_by == caller.username)][:limit]


async def found(request: Request, job_id: str, entry_points: tuple[str, ...] = TRAINING_ENTRY_POINTS,
                kind: str = "training") -> Job:
    """The job, if it is of this kind and the caller may READ its model; 404 otherwise (whether another
    model's job exists is not the caller's business)."""
    job = await run_in_threadpool(request.app.state.jobs.store.get, job_id)
    if job is None or job.entry_point not in entry_points or not await readable(request, [job]):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no {kind} job '{job_id}'")
    return job


# jobs read for a listing before those of models the caller may not read are left out
LISTED_JOBS = 1_000


async def listed(request: Request, entry_points: tuple[str, ...]) -> list[Job]:
    """GET /train, /monitor: the newest 100 jobs of these entry points the caller may see (:func:`readable`),
    of the newest :data:`LISTED_JOBS`."""
    jobs = await run_in_threadpool(request.app.state.jobs.store.list, entry_points, LISTED_JOBS)
    return await readable(request, jobs)


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=TrainAccepted,
             dependencies=[Trains], responses={401: {"description": "token required"},
                                               409: {"description": "another user's job is creating that model"}})
async def start_training(body: TrainRequest, settings: SettingsDep, jobs: JobsDep, caller: CallerDep,
                         request: Request) -> JSONResponse:
    """Queue ``mlflow run`` of this project with these parameters; poll the returned job."""
    parameters = body.mlproject_parameters()
    parameters["data_path"] = resolve_data_path(body.data_path, settings)
    await run_in_threadpool(check_target, parameters["data_path"], body.target)
    parameters["model_name"] = body.model_name or settings.model_name
    if caller is not None and request.state.creating:
        await check_not_claimed(parameters["model_name"], caller, jobs)
    if body.include_feedback:
        if settings.inference_log is None:
            raise unprocessable(["body", "include_feedback"], "the inference log is off (INFERENCE_LOG_URI=off)")
        # the log's URL reaches the job through its environment (INFERENCE_LOG_URI), never a command line
        parameters["feedback_from"] = body.feedback_from or parameters["model_name"]
        # its labelled rows become this model's training data, which the caller can read
        await request.app.state.authorizer.check(request.headers.get("authorization"), parameters["feedback_from"],
                                                 "READ")
    job = await run_in_threadpool(jobs.submit, parameters, parameters["model_name"],
                                  entry_point="tune" if body.mode == "tune" else "main", caller=caller)
    location = f"/train/{job.id}"
    accepted = TrainAccepted(job_id=job.id, status=job.status, location=location)
    return JSONResponse(accepted.model_dump(), status_code=202, headers={"Location": location})


@router.get("", response_model=list[JobOut], dependencies=[Authenticated])
async def list_jobs(request: Request) -> list[JobOut]:
    """The newest 100 jobs the caller asked for or of models they may read, newest first (of the newest
    1,000)."""
    return [job_out(j) for j in await listed(request, TRAINING_ENTRY_POINTS)]


@router.get("/{job_id}", response_model=JobOut, dependencies=[Authenticated],
            responses={404: {"description": "unknown job, or one of a model the caller may not read"}})
async def get_job(job_id: str, request: Request) -> JobOut:
    return job_out(await found(request, job_id))


@router.delete("/{job_id}", response_model=JobOut, dependencies=[EditsPerModel],
               responses={401: {"description": "token required"}, 404: {"description": "unknown job"},
                          409: {"description": "job already ended"}})
async def cancel_job(job_id: str, jobs: JobsDep, request: Request) -> JobOut:
    """Cancel a queued or running job (its ``mlflow run`` process group is stopped)."""
    job = await found(request, job_id)
    # its own requester, or as training it: EDIT on its model (the token, with GATEWAY_AUTH=token)
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None or job.requested_by != caller.username:
        await request.app.state.authorizer.check(request.headers.get("authorization"), job.model_name, "EDIT")
    if job.status not in ("queued", "running"):
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job '{job_id}' already {job.status}")
    return job_out(await run_in_threadpool(jobs.cancel, job_id))
