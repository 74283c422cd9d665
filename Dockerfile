# syntax=docker/dockerfile:1
# One image for every Orbweaver service and the CLI: `docker run IMAGE storage ...`,
# `... scheduler ...`, `... worker ...`, `... health HOST:PORT` (deploy/compose.yaml uses it).
#
#   docker build -t orbweaver .
#
# The build stage runs scripts/build-dist.sh and nothing else; .ci/run runs that same script on
# every change, because the image itself cannot be built where this project's CI runs (no
# base-image registry there). The runtime stage is the same Debian release as the build stage,
# so the virtual environment built there runs here unchanged.
ARG RUST_VERSION=1.85
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        python3 python3-venv python3-dev gcc pkg-config libmariadb-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN bash scripts/build-dist.sh /src/dist /opt/orbweaver

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        python3 libmariadb3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/orbweaver --uid 10001 orbweaver
COPY --from=build /opt/orbweaver /opt/orbweaver
ENV PATH=/opt/orbweaver/bin:$PATH \
    PYTHONUNBUFFERED=1
# Not root: task code runs as the worker's user (docs/security.md).
USER orbweaver
WORKDIR /var/lib/orbweaver
EXPOSE 50051 50052
ENTRYPOINT ["orbweaver"]
CMD ["--help"]
