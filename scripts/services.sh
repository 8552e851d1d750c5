#!/usr/bin/env bash
# Starts what the tests need, idempotently: PostgreSQL and Redis (when they are not running),
# the Python packages of the tests (moto's S3 server, pyarrow, duckdb), and moto's S3 server on
# 127.0.0.1:${EVALSINK_S3_PORT:-9100}. Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'services: %s\n' "$*" >&2; }

# PostgreSQL (trust auth on 127.0.0.1:5432, user root).
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  log "starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL is not reachable on 127.0.0.1:5432"; exit 1; }

# Redis on 6379.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.5; done
fi

# Python packages for the S3 server and for reading Parquet back in tests.
PY=${PYTHON:-python3}
# moto 5.2.1 answers CompleteMultipartUpload with a wrong XML root element, which aws-sdk-s3
# rejects (getmoto/moto#10055): the S3 tests need a later one.
MOTO_OK='import moto, sys; sys.exit(tuple(int(x) for x in moto.__version__.split(".")[:3]) < (5, 2, 5))'
if ! "$PY" -c 'import moto.server, flask, flask_cors, pyarrow, duckdb' >/dev/null 2>&1 \
  || ! "$PY" -c "$MOTO_OK" >/dev/null 2>&1; then
  log "installing moto[server], pyarrow and duckdb"
  "$PY" -m pip install --quiet --disable-pip-version-check 'moto[server]>=5.2.5' pyarrow duckdb
fi

# moto's S3-compatible server.
S3_PORT=${EVALSINK_S3_PORT:-9100}
if ! curl -fsS -o /dev/null "http://127.0.0.1:${S3_PORT}/" 2>/dev/null; then
  log "starting moto S3 server on 127.0.0.1:${S3_PORT}"
  mkdir -p target
  nohup "$PY" -m moto.server -H 127.0.0.1 -p "$S3_PORT" >target/moto.log 2>&1 &
  for _ in $(seq 1 60); do
    curl -fsS -o /dev/null "http://127.0.0.1:${S3_PORT}/" 2>/dev/null && break
    sleep 0.5
  done
fi
curl -fsS -o /dev/null "http://127.0.0.1:${S3_PORT}/" || { log "moto did not start; see target/moto.log"; exit 1; }
log "ready: PostgreSQL 127.0.0.1:5432, Redis 127.0.0.1:6379, S3 http://127.0.0.1:${S3_PORT}"
