# fedhaven site: fl-client (Flower SuperNode + DP training), CUDA-capable; runs on CPU when no GPU is given.
# Build from the repository root:  docker build -f deploy/docker/site.Dockerfile -t fedhaven-site .
# Run with a GPU:  docker run --gpus all -v /etc/fedhaven:/etc/fedhaven:ro -v /data:/data:ro -v state:/var/lib/fedhaven fedhaven-site
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \
    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 RAY_USAGE_STATS_ENABLED=0
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# PyPI's torch for Linux x86_64 is the CUDA build.
RUN pip install torch==2.14.1 torchvision==0.29.1

WORKDIR /opt/fedhaven
COPY pyproject.toml README.md LICENSE ./
COPY shared ./shared
COPY client ./client
COPY server ./server
COPY simulations ./simulations
# /etc/fedhaven/key and /etc/fedhaven/public exist, owned by fedhaven, so that an empty named volume mounted there
# (the compose demo) takes that owner: the site's key is made and read by this user only.
RUN pip install . && useradd --system --home /var/lib/fedhaven fedhaven \
    && mkdir -p /var/lib/fedhaven /etc/fedhaven/key /etc/fedhaven/public \
    && chown fedhaven /var/lib/fedhaven /etc/fedhaven/key /etc/fedhaven/public && chmod 0700 /etc/fedhaven/key

USER fedhaven
# The site's own bundle and nothing else: /etc/fedhaven holds site.toml (state_dir = "/var/lib/fedhaven"),
# the site's key and the CA certificate; never mount the coordinator's state or another site's files.
VOLUME /var/lib/fedhaven
ENTRYPOINT ["fl-client"]
CMD ["start", "--config", "/etc/fedhaven/site.toml"]
