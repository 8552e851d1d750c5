#!/usr/bin/env bash
# The whole test suite: starts what it needs, then runs every unit and integration test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export DATABASE_URL=${DATABASE_URL:-postgres://root@127.0.0.1:5432/evalsink}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export EVALSINK_S3_ENDPOINT=${EVALSINK_S3_ENDPOINT:-http://127.0.0.1:${EVALSINK_S3_PORT:-9100}}
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
export AWS_REGION=${AWS_REGION:-us-east-1}
# One profile (release) for the binary, tests and benchmarks, so dependencies build once.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --no-fail-fast "$@"
else
  cargo test --release --no-fail-fast "$@"
fi
