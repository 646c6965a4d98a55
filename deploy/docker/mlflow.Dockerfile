# The tracking server image: mlflow, its auth app's Flask-WTF and the PostgreSQL driver, at the
# versions pinned in requirements.txt (used here as a constraints file), and the launcher that
# turns on MLflow's basic-auth app when GATEWAY_AUTH=mlflow (stack/tracking_auth.py: standard
# library and contract/exposure.py only, nothing else of the project).
# Build context: the repository root (see docker-compose.yaml).

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: \
        -c /tmp/requirements.txt mlflow Flask-WTF psycopg psycopg-binary

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GIT_PYTHON_REFRESH=quiet \
    PYTHONPATH=/opt/tabular
RUN groupadd --system --gid 10001 mlflow \
    && useradd --system --uid 10001 --gid mlflow --home-dir /mlartifacts --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:mlflow /mlartifacts
COPY --from=build /opt/venv /opt/venv
COPY contract/__init__.py contract/exposure.py /opt/tabular/contract/
COPY stack/__init__.py stack/tracking_auth.py /opt/tabular/stack/
USER 10001:10001
EXPOSE 5000
CMD ["python", "-m", "stack.tracking_auth", "mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
