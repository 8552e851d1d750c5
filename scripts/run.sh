#!/usr/bin/env bash
# The main job on the default config (config/evalsink.toml): starts the services it needs,
# builds evalsink, and runs the pipeline on stdin. With nothing piped in, it feeds 10,000
# generated sample events.   scripts/run.sh            # sample events
#                            executor | scripts/run.sh # your events
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --quiet
export DATABASE_URL=${DATABASE_URL:-postgres://root@127.0.0.1:5432/evalsink}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
# Events piped in or redirected from a file are the input; otherwise (a terminal, /dev/null,
# no stdin at all) sample events are.
if [ ! -p /dev/stdin ] && [ ! -f /dev/stdin ]; then
  target/release/evalsink generate --events 10000 --bad-lines 0.001 | target/release/evalsink run "$@"
else
  exec target/release/evalsink run "$@"
fi
