"""Every setting of the services (gateway, model server, local stack), read from the environment.

One typed object for all of them, so a name means the same in ``make up``,
docker-compose and the Kubernetes ConfigMap. Nothing else reads ``os.environ``
for a setting; nothing is read at import time: call :func:`get_settings`.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from typing import Annotated

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contract.names import CHALLENGER_ALIAS, DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME, valid_alias
from contract.tables import names_of_line

PROJECT_DIR = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    # Where the local stack keeps its database, artifacts, logs, jobs and pid files.
    stack_dir: Path = Field(PROJECT_DIR / ".stack", validation_alias="STACK_DIR")
    host: str = Field("127.0.0.1", validation_alias="STACK_HOST")
    gateway_port: int = Field(8000, validation_alias="GATEWAY_PORT")
    mlflow_port: int = Field(5000, validation_alias="MLFLOW_PORT")
    model_server_port: int = Field(5001, validation_alias="MODEL_SERVER_PORT")
    # Unset: derived from host and ports above (the local stack). Set them when
    # the services run elsewhere (containers).
    mlflow_tracking_uri: str | None = Field(None, validation_alias="MLFLOW_TRACKING_URI")
    model_server_url: str | None = Field(None, validation_alias="MODEL_SERVER_URL")

    # Stores of the local stack's tracking server; unset: SQLite and a folder in STACK_DIR.
    backend_store_uri: str | None = Field(None, validation_alias="MLFLOW_BACKEND_STORE_URI")
    artifacts_destination: str | None = Field(None, validation_alias="MLFLOW_ARTIFACTS_DESTINATION")

    # The model /predict answers for (other registered models are served by name).
    model_name: str = Field(DEFAULT_MODEL_NAME, validation_alias="MODEL_NAME")
    # Each loaded version runs in a worker process of its own, started with that version's
    # logged code. fast: our worker (compiled records path); mlflow: `mlflow models serve`.
    model_server_mode: Literal["fast", "mlflow"] = Field("fast", validation_alias="MODEL_SERVER_MODE")
    # What is served: the version holding SERVE_ALIAS, or the newest version in SERVE_STAGE.
    # The registry policy keeps the serving alias and the Production stage on the same
    # version (contract/registry.py), so both choices agree unless SERVE_STAGE=Staging.
    serve_follows: Literal["alias", "stage"] = Field("alias", validation_alias="SERVE_FOLLOWS")
    serve_alias: str = Field("champion", validation_alias="SERVE_ALIAS")
    serve_stage: Literal["Staging", "Production"] = Field("Production", validation_alias="SERVE_STAGE")
    registry_poll_seconds: float = Field(2.0, gt=0, validation_alias="REGISTRY_POLL_SECONDS")
    # How long the old model server keeps running after a switch, for requests in flight.
    drain_seconds: float = Field(5.0, ge=0, validation_alias="MODEL_SERVER_DRAIN_SECONDS")
    model_server_start_timeout: float = Field(180.0, gt=0, validation_alias="MODEL_SERVER_START_TIMEOUT")
    # Versions loaded at once (each is a process: about 250 MB); beyond, the least recently used
    # version that no alias serves is unloaded.
    model_server_max_loaded: int = Field(4, ge=1, validation_alias="MODEL_SERVER_MAX_LOADED")
    # Processes answering for each loaded version: forked from the loaded worker in mode fast (the
    # model's memory is shared), uvicorn workers of `mlflow models serve` in mode mlflow.
    model_server_workers: int = Field(2, ge=1, le=64, validation_alias="MODEL_SERVER_WORKERS")
    # Mode fast: one worker process kept warm for the next version to load (about 200 MB while it waits).
    model_server_spare: bool = Field(True, validation_alias="MODEL_SERVER_SPARE_WORKER")
    # Gateway -> model server: a bounded wait, so a dead server means a quick 503.
    model_server_timeout: float = Field(30.0, gt=0, validation_alias="MODEL_SERVER_TIMEOUT")
    model_server_connect_timeout: float = Field(2.0, gt=0, validation_alias="MODEL_SERVER_CONNECT_TIMEOUT")

    # Micro-batching of /predict (gateway/batching.py).
    batching: bool = Field(True, validation_alias="GATEWAY_BATCHING")
    batch_max_rows: int = Field(256, ge=1, validation_alias="GATEWAY_BATCH_MAX_ROWS")
    batch_max_wait_ms: float = Field(0.0, ge=0, validation_alias="GATEWAY_BATCH_MAX_WAIT_MS")
    batch_concurrency: int = Field(2, ge=1, validation_alias="GATEWAY_BATCH_CONCURRENCY")

    api_token: str | None = Field(None, validation_alias="GATEWAY_API_TOKEN", repr=False)
    # Unset: `token` when GATEWAY_API_TOKEN is set, else `none` (allowed on loopback only: contract/exposure.py).
    # `mlflow`: callers are MLflow users, with MLflow's per-model permissions (gateway/auth.py).
    auth: Literal["none", "token", "mlflow"] | None = Field(None, validation_alias="GATEWAY_AUTH")
    # GATEWAY_AUTH=mlflow: the tracking server's admin, created on its first start; the stack's own services
    # act as it (never MLflow's default password: refused when unset)
    mlflow_admin_username: str = Field("admin", min_length=1, validation_alias="MLFLOW_AUTH_ADMIN_USERNAME")
    mlflow_admin_password: str | None = Field(None, validation_alias="MLFLOW_AUTH_ADMIN_PASSWORD", repr=False)
    # how long the gateway trusts a caller's checked credentials and permission (a revoked one is out after it)
    auth_cache_seconds: float = Field(5.0, ge=0, le=300, validation_alias="GATEWAY_AUTH_CACHE_SECONDS")
    # Where a container runtime publishes the gateway's port (compose sets it): what decides whether the
    # gateway is reachable beyond this host's loopback. Unset: STACK_HOST, the address it binds.
    published_host: str | None = Field(None, validation_alias="GATEWAY_PUBLISHED_HOST")
    # libpq reads it (the tracking store and the inference log on PostgreSQL); here only to refuse placeholders
    postgres_password: str | None = Field(None, validation_alias="PGPASSWORD", repr=False)
    data_roots: Annotated[list[Path], NoDecode] = Field(
        [PROJECT_DIR / "data"], validation_alias="GATEWAY_DATA_ROOTS"
    )
    allowed_uri_schemes: Annotated[list[str], NoDecode] = Field(
        ["runs", "models", "mlflow-artifacts"], validation_alias="GATEWAY_ALLOWED_URI_SCHEMES"
    )
    experiment_name: str = Field(DEFAULT_EXPERIMENT, validation_alias="TRAIN_EXPERIMENT")
    # false: this instance runs no training jobs (/train answers 503); on Kubernetes the
    # scaled-out gateway pods leave training to the one trainer pod.
    training_enabled: bool = Field(True, validation_alias="GATEWAY_TRAINING")
    # true: at start, if the registry has no version of MODEL_NAME and no job is training one, train it on
    # the embedded default data with promote=if_better (so it is served), as `make up` does; compose sets it
    bootstrap_model: bool = Field(False, validation_alias="GATEWAY_BOOTSTRAP_MODEL")
    max_predict_rows: int = Field(10_000, ge=1, validation_alias="GATEWAY_MAX_PREDICT_ROWS")
    # An explanation costs ~10-30 ms a row on the default model (a prediction ~10 us): its own, lower limit.
    max_explain_rows: int = Field(100, ge=1, validation_alias="GATEWAY_MAX_EXPLAIN_ROWS")
    # Any request body above this is refused with 413 before or while it is read.
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, validation_alias="GATEWAY_MAX_BODY_BYTES")
    # Back-pressure: /predict requests waiting at once; beyond, 503 with Retry-After.
    max_pending: int = Field(1024, ge=1, validation_alias="GATEWAY_MAX_PENDING")
    retry_after_seconds: int = Field(1, ge=1, validation_alias="GATEWAY_RETRY_AFTER_SECONDS")
    # The inference log (contract/inference_log.py): a SQLAlchemy URL; unset: SQLite in STACK_DIR;
    # "off": nothing is logged.
    inference_log_uri: str | None = Field(None, validation_alias="INFERENCE_LOG_URI")
    inference_log_sample_rate: float = Field(1.0, ge=0, le=1, validation_alias="INFERENCE_LOG_SAMPLE_RATE")
    inference_log_retention_days: float = Field(30.0, gt=0, validation_alias="INFERENCE_LOG_RETENTION_DAYS")
    # never stored (personal data): comma-separated column names
    inference_log_exclude_columns: Annotated[list[str], NoDecode] = Field(
        [], validation_alias="INFERENCE_LOG_EXCLUDE_COLUMNS")
    # rows waiting to be written at most; beyond (a slow or dead store), new rows are dropped and counted
    inference_log_buffer_rows: int = Field(100_000, ge=1, validation_alias="INFERENCE_LOG_BUFFER_ROWS")
    # run the monitor step for every served model this often (minutes); 0: only on request (POST /monitor)
    monitor_every_minutes: float = Field(0.0, ge=0, validation_alias="MONITOR_EVERY_MINUTES")
    # Canary rollouts (gateway/rollouts.py): the window of the figures each version is judged on, the requests
    # each version needs in it before a judgement, and when a canary is rolled back automatically.
    rollout_window_seconds: float = Field(60.0, gt=0, validation_alias="ROLLOUT_WINDOW_SECONDS")
    rollout_min_requests: int = Field(20, ge=1, validation_alias="ROLLOUT_MIN_REQUESTS")
    rollout_max_error_rate_delta: float = Field(0.05, ge=0, le=1, validation_alias="ROLLOUT_MAX_ERROR_RATE_DELTA")
    rollout_max_p99_ratio: float = Field(3.0, gt=1, validation_alias="ROLLOUT_MAX_P99_RATIO")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", validation_alias="LOG_LEVEL")
    access_log: bool = Field(True, validation_alias="GATEWAY_ACCESS_LOG")

    @field_validator("serve_alias")
    @classmethod
    def _serving_alias(cls, value: str) -> str:
        if not valid_alias(value) or value == CHALLENGER_ALIAS:
            raise ValueError(f"SERVE_ALIAS={value!r}: letters, digits, '_' and '-', starting with a letter or '_',"
                             f" not 'latest', 'v<number>' or {CHALLENGER_ALIAS!r}")
        return value

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(p).expanduser() for p in value.split(":") if p.strip()]
        return value

    @field_validator("inference_log_exclude_columns", mode="before")
    @classmethod
    def _split_columns(cls, value: object) -> object:
        if isinstance(value, str):  # one CSV line, as a header holds the names
            return list(names_of_line(value))
        return value

    @field_validator("allowed_uri_schemes", mode="before")
    @classmethod
    def _split_schemes(cls, value: object) -> object:
        if isinstance(value, str):
            return [s.strip().lower() for s in value.split(",") if s.strip()]
        return value

    @property
    def auth_mode(self) -> Literal["none", "token", "mlflow"]:
        return self.auth or ("token" if self.api_token else "none")

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.host}:{self.mlflow_port}"

    @property
    def model_server(self) -> str:
        return self.model_server_url or f"http://{self.host}:{self.model_server_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"

    @property
    def inference_log(self) -> str | None:
        """The inference log's URL, None when it is off."""
        if self.inference_log_uri is None:
            return f"sqlite:///{(self.stack_dir / 'inference.db').resolve()}"
        return None if self.inference_log_uri.strip().lower() in ("", "off", "none") else self.inference_log_uri

    @property
    def jobs_db(self) -> Path:
        return self.stack_dir / "jobs.db"

    @property
    def logs_dir(self) -> Path:
        return self.stack_dir / "logs"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def settings_or_exit(program: str) -> Settings:
    """The settings of a program people start: a bad value is one line naming the variable (exit 2),
    not a traceback."""
    try:
        return get_settings()
    except ValidationError as err:
        for problem in err.errors():
            name = ".".join(str(part) for part in problem["loc"])
            print(f"{program}: {name}: {problem['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        raise SystemExit(2) from None
