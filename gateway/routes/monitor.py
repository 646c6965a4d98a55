"""Monitoring jobs: the ``monitor`` step, run by ``mlflow run`` like training, on the same job machinery."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from contract.registry import NotFound
from gateway.deps import Authenticated, CallerDep, Trains, JobsDep, RegistryDep, SettingsDep
from gateway.jobs import MONITOR_ENTRY_POINT, Job
from gateway.routes.train import found, listed, training_enabled
from gateway.schemas import MonitorJobOut, MonitorRequest, MonitorSummary, TrainAccepted

router = APIRouter(prefix="/monitor", tags=["monitor"])
ENTRY_POINTS = (MONITOR_ENTRY_POINT,)


def monitor_job_out(job: Job) -> MonitorJobOut:
    summary = MonitorSummary(**{k: v for k, v in job.summary.items() if k in MonitorSummary.model_fields}) \
        if job.summary else None
    return MonitorJobOut(job_id=job.id, status=job.status, model_name=job.model_name, parameters=job.parameters,
                         created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
                         run_id=job.run_id, summary=summary, error=job.error, log_tail=job.log_tail,
                         requested_by=job.requested_by)


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=TrainAccepted,
             dependencies=[Trains], responses={401: {"description": "token required"},
                                                   404: {"description": "no such model or version"},
                                                   503: {"description": "jobs are off on this instance"}})
async def start_monitoring(body: MonitorRequest, settings: SettingsDep, jobs: JobsDep, registry: RegistryDep,
                           caller: CallerDep) -> Any:
    """Queue the ``monitor`` step for a model (one version, or every version) over a time window; poll the
    returned job for its summary. The run goes to the model's experiment ``monitoring/<model>``."""
    await training_enabled(settings)

    def check() -> None:
        registry.model(body.model_name)
        if body.version:
            registry.version(body.model_name, body.version)

    try:
        await run_in_threadpool(check)
    except NotFound as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(err)) from None
    parameters = {"model_name": body.model_name, **{k: getattr(body, k) for k in ("version", "since", "until")
                                                     if getattr(body, k)}}
    job = jobs.submit(parameters, body.model_name, entry_point=MONITOR_ENTRY_POINT, caller=caller)
    location = f"/monitor/{job.id}"
    return JSONResponse(TrainAccepted(job_id=job.id, status=job.status, location=location).model_dump(),
                        status_code=202, headers={"Location": location})


@router.get("", response_model=list[MonitorJobOut], dependencies=[Authenticated])
async def list_monitoring(request: Request) -> list[MonitorJobOut]:
    """The newest 100 monitoring jobs the caller asked for or of models they may read, newest first (of the newest
    1,000)."""
    return [monitor_job_out(j) for j in await listed(request, ENTRY_POINTS)]


@router.get("/{job_id}", response_model=MonitorJobOut, dependencies=[Authenticated],
            responses={404: {"description": "unknown job, or one of a model the caller may not read"}})
async def get_monitoring(job_id: str, request: Request) -> MonitorJobOut:
    """Status, the monitoring run and, once done, the summary: rows, drift share, drifted features, live
    metrics (from the true labels sent to POST /feedback)."""
    return monitor_job_out(await found(request, job_id, ENTRY_POINTS, "monitoring"))
