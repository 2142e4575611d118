# fedhaven coordinator: fl-server (Flower SuperLink + executor on loopback, Fleet front for sites).
# Build from the repository root:  docker build -f deploy/docker/coordinator.Dockerfile -t fedhaven-coordinator .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \
    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 RAY_USAGE_STATS_ENABLED=0

# CPU-only torch: the coordinator aggregates and evaluates, it does not need CUDA.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

WORKDIR /opt/fedhaven
COPY pyproject.toml README.md LICENSE ./
COPY shared ./shared
COPY client ./client
COPY server ./server
COPY simulations ./simulations
RUN pip install . && useradd --system --home /var/lib/fedhaven fedhaven && mkdir -p /var/lib/fedhaven \
    && chown fedhaven /var/lib/fedhaven && chmod 0700 /var/lib/fedhaven

USER fedhaven
VOLUME /var/lib/fedhaven
# Only the Fleet front is exposed; the SuperLink listens on a Unix socket in the 0700 state directory and the
# Runtime front on 127.0.0.1 inside.
EXPOSE 9092
ENTRYPOINT ["fl-server"]
CMD ["start", "--state-dir", "/var/lib/fedhaven"]
