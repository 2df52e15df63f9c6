# Production image: the worker, the gateway and the CLI, no embedded servers. Build it tagged with
# the package version (the manifests in deploy/ and compose.yaml name that tag):
#
#   VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
#   docker build --build-arg VERSION="$VERSION" -t "tradefleet:$VERSION" .
#
# Reproducible: the dependencies come from requirements.txt (every pin with its hashes, made by
# `bash tools/lock.sh`); for a byte-identical base too, pass a digest:
# --build-arg BASE=python:3.11-slim-bookworm@sha256:<digest>.
# Least privilege: runs as uid/gid 10001 (numeric, so Kubernetes' runAsNonRoot can check it),
# writes nothing outside /tmp (bytecode is compiled at build time), so the root filesystem can be
# mounted read-only with an emptyDir or tmpfs at /tmp.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY trading ./trading
COPY strategy ./strategy
COPY exchange ./exchange
COPY coordination ./coordination
COPY ledger ./ledger
COPY market ./market
COPY broker ./broker
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${BASE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tradefleet" \
      org.opencontainers.image.description="KRX day-trading workers coordinated through Redis, with a Postgres ledger" \
      org.opencontainers.image.version="${VERSION}"
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && pip install --require-hashes --no-deps -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
# From here on nothing is written next to the code: .pyc files were compiled by pip above.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
# An empty, root-owned working directory: `python -m` puts the working directory first on
# sys.path, so it must hold nothing and be writable by nobody.
WORKDIR /opt/tradefleet
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "worker"]
CMD ["run"]
