# The application image: the gateway and the model server (two services, one
# image), plus everything `POST /train` needs to run `mlflow run` of this
# project inside the container: the project source and the default data set.
# The model server's workers load each version with the code logged with it; the
# project's own pyfunc/ is here for training jobs only.
# Build context: the repository root (see docker-compose.yaml).

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
# Every version is pinned in requirements.txt; wheels only, so no compiler is needed.
RUN /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: -r /tmp/requirements.txt

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GIT_PYTHON_REFRESH=quiet \
    STACK_DIR=/var/lib/tabular \
    STACK_HOST=0.0.0.0 \
    GATEWAY_DATA_ROOTS=/app/data:/data
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /var/lib/tabular --shell /usr/sbin/nologin app \
    && mkdir -p /var/lib/tabular /data \
    && chown app:app /var/lib/tabular /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Source stays owned by root: the app user can read it, not change it.
COPY MLproject python_env.yaml conda.yaml requirements.txt ./
COPY contract/ contract/
COPY runtime/ runtime/
COPY steps/ steps/
COPY pyfunc/ pyfunc/
COPY gateway/ gateway/
COPY model_server/ model_server/
COPY data/ data/
USER 10001:10001
EXPOSE 8000 5001
CMD ["python", "-m", "gateway"]
