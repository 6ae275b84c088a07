# drkit: one image for every job (schedule due, schedule run, backup, restore, drill, pg receive).
# Build: docker build -t drkit:0.1.0 .   (PG_MAJOR must be the servers' major version: pg_waldump,
# pg_basebackup and a restore's pg_ctl have to read that version's WAL and data directories.)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for drkit's optional RDB scanner extension (setup.py); not in the final image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, from the lock file only (every file's hash is checked), so the layer is
# rebuilt only when the lock changes.
COPY requirements.lock ./
RUN python -m venv /opt/drkit \
 && /opt/drkit/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml setup.py README.md ./
COPY drkit ./drkit
RUN /opt/drkit/bin/pip install --no-deps . \
 && /opt/drkit/bin/drkit --version

FROM ${PYTHON_IMAGE}
ARG PG_MAJOR=15
# The PostgreSQL tools drkit runs (pg_basebackup, pg_receivewal, pg_waldump, pg_dump, pg_restore,
# pg_ctl for restores and drills) from the PGDG repository, for the servers' major version; the
# Redis and MongoDB dumpers speak their protocols from Python and need no client tools.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg tzdata \
 && curl -fsSL https://www.postgresql.org/media/keys/ACCC4CF8.asc | gpg --dearmor -o /usr/share/keyrings/pgdg.gpg \
 && echo "deb [signed-by=/usr/share/keyrings/pgdg.gpg] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
      > /etc/apt/sources.list.d/pgdg.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends "postgresql-${PG_MAJOR}" "postgresql-client-${PG_MAJOR}" \
 && apt-get purge -y --auto-remove curl gnupg \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/drkit /opt/drkit
# Non-root: a fixed uid so Kubernetes' runAsNonRoot can check it and volumes can be owned by it.
RUN groupadd --system --gid 10001 drkit \
 && useradd --system --uid 10001 --gid drkit --home-dir /var/lib/drkit --create-home drkit
ENV PATH=/opt/drkit/bin:/usr/lib/postgresql/${PG_MAJOR}/bin:$PATH \
    DRKIT_PG_BIN=/usr/lib/postgresql/${PG_MAJOR}/bin \
    DRKIT_CONFIG=/etc/drkit/drkit.yaml \
    DRKIT_STATE_DIR=/var/lib/drkit \
    DRKIT_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/drkit
EXPOSE 9464
ENTRYPOINT ["drkit"]
CMD ["--help"]
