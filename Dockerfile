# celery-exporter image: the event-stream exporter (default) and, with `sidecar`, the worker
# resource sidecar. The image also runs Celery itself (celery is a dependency), which is how
# deploy/compose.yaml runs its sample worker from the same image.
#
#   docker build -t celery-exporter .
#   docker run --rm -p 9808:9808 -e CELERY_BROKER_URL=redis://redis:6379/0 celery-exporter

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- build: a virtualenv in /opt/venv with the dependencies, then the package -----------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies in their own layer: it is rebuilt only when pyproject.toml changes, not when the
# code does. The list comes from pyproject.toml itself, so it cannot drift from the package's;
# the sqs extra (boto3, for sqs:// brokers) is in the image too.
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["sqs"]))' \
        > requirements.txt \
    && /opt/venv/bin/pip install -r requirements.txt

# The package itself, without touching the dependencies installed above.
COPY README.md LICENSE ./
COPY celery_exporter ./celery_exporter
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/celery-exporter --help > /dev/null

# --- runtime: the same Python, the virtualenv and nothing else ---------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# A fixed numeric user (10001), so that Kubernetes' runAsNonRoot can check it, and so that a
# resource sidecar running as the same UID can read the worker's /proc entries.
RUN groupadd --system --gid 10001 celery \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin celery

COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001
EXPOSE 9808

# /healthz answers 200 while the process is alive. Slim images have no curl, so Python asks.
# It follows CELERY_EXPORTER_PORT; behind basic auth, add --web.healthz-unauthenticated.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CELERY_EXPORTER_PORT', '9808') + '/healthz', timeout=4)"]

ENTRYPOINT ["celery-exporter"]
