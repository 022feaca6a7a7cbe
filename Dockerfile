# The OMS image: every worker, the front end, the simulated venue, the jobs worker and scheduler, and the
# `oms` tools run from it (docker-compose.yml picks the process with `command`).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    OMS_DATA_DIR=/var/lib/oms
# Every listener binds loopback by default (common/settings.py); a container must listen on its own interface
# to be reached at all. Publish its ports on the host's 127.0.0.1 (docker-compose.yml does).
ENV OMS_BIND_HOST=0.0.0.0

WORKDIR /app
# Dependencies first (pinned by requirements.lock), so a code change does not reinstall them.
COPY pyproject.toml requirements.lock ./
RUN mkdir -p common services proto tools migrations \
    && pip install -c requirements.lock -e . \
    && useradd --system --home-dir /var/lib/oms --create-home oms \
    && install -d -o oms -g oms /var/lib/oms/secrets /var/lib/oms/keys
COPY . .
# proto/gen is generated, not committed (.gitignore) nor copied (.dockerignore): a clean clone has none, and
# every gRPC import (`from proto.gen import order_pb2`) needs it. Generate it here, as root, before the image
# turns read-only for the `oms` user; the import check fails the build rather than the first container.
RUN pip install -c requirements.lock --no-deps -e . \
    && python -m tools.protogen --force \
    && python -c "from proto.gen import order_pb2, order_pb2_grpc"

USER oms
# Stage workers, the relay and the jobs processes serve /metrics and /health/* here (OMS_METRICS_PORT).
EXPOSE 9100 8080 50051
CMD ["python", "-m", "tools.cli", "help"]
