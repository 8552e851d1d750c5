#!/usr/bin/env bash
# End-to-end benchmark of the postgres sink against `psql \copy`, in one run on the same rows.
#
#   (a) psql \copy of the equivalent rows (exported from a load of the same events) into the
#       `events` table of evalsink's migrations (the same definition: lz4 payload);
#   (a') the same \copy into that table with the default TOAST compression (pglz), for context;
#   (b) evalsink replay → classify → postgres, `events` table only;
#   (c) evalsink replay → classify → postgres, every table (events, evaluations, security).
#
# Each load also prints the CPU seconds of the server's backends (when the server runs here)
# and of the client: on a machine where the server is CPU-bound, they say how far a load can go.
#
# Each is run ROUNDS times (default 3) on a fresh database; medians and their ratios are printed,
# and each round's ratios to that round's \copy (how far the medians can be trusted).
#
#   benches/postgres.sh                 # 100000 events, seed 1
#   EVENTS=300000 ROUNDS=5 benches/postgres.sh
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${EVENTS:-100000}
SEED=${SEED:-1}
ROUNDS=${ROUNDS:-3}
WORK=${BENCH_DIR:-target/bench-postgres}
BASE=${PG_BASE_URL:-postgres://root@127.0.0.1:5432}
DB=evalsink_bench
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

cargo build --release --quiet
BIN=$PWD/target/release/evalsink
INPUT=$WORK/events-$EVENTS-$SEED.ndjson
[ -s "$INPUT" ] || "$BIN" generate --events "$EVENTS" --seed "$SEED" --large-outputs 0 >"$INPUT"
BYTES=$(stat -c %s "$INPUT")

# Only the `events` store, for (b).
cat >"$WORK/events-only.toml" <<'EOF'
[EVALUATION_QUEUED]
stores = ["events"]
[EVALUATION_STARTED]
stores = ["events"]
[EVALUATION_COMPLETED]
stores = ["events"]
[EVALUATION_FAILED]
stores = ["events"]
[EXECUTOR_HEALTH]
stores = ["events"]
[QUEUE_METRICS]
stores = ["events"]
[CONTAINER_CREATED]
stores = ["events"]
[RESOURCE_VIOLATION]
stores = ["events"]
EOF

pipeline() { # rules-file-or-empty -> config path
  local cfg=$WORK/pipeline-$([ -n "$1" ] && echo events || echo all).toml
  {
    echo "data_dir = \"$WORK/data\""
    echo '[sources.in]'
    echo 'type = "stdin"'
    echo '[transforms.classify]'
    echo 'type = "classify"'
    echo 'inputs = ["in"]'
    [ -n "$1" ] && echo "rules = \"$1\""
    echo '[sinks.pg]'
    echo 'type = "postgres"'
    echo 'inputs = ["classify"]'
    echo "endpoint = \"$BASE/$DB\""
  } >"$cfg"
  echo "$cfg"
}
EVENTS_CFG=$(pipeline "$WORK/events-only.toml")
ALL_CFG=$(pipeline "")

psql_admin() { psql -X -q -v ON_ERROR_STOP=1 "$BASE/postgres" "$@"; }
psql_db() { psql -X -q -v ON_ERROR_STOP=1 "$BASE/$DB" "$@"; }
fresh_db() {
  psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
  "$BIN" migrate --database-url "$BASE/$DB" 2>/dev/null
}
# CPU seconds that the server's exited backends have used: the postmaster's children's time,
# when the server runs on this machine and its data directory is readable (else empty).
PM_PID=$(head -n1 "$(psql_admin -Atc 'SHOW data_directory' 2>/dev/null)/postmaster.pid" 2>/dev/null || true)
server_cpu() { [ -n "$PM_PID" ] && awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($16 + $17) / t }' "/proc/$PM_PID/stat"; }
seconds() { # command... -> wall seconds; the server's and the command's CPU seconds go to $WORK/cpu.txt
  local start end before after
  before=$(server_cpu)
  start=$(date +%s.%N)
  local TIMEFORMAT='%U %S' # of `time`: the command's user and system CPU seconds
  { time "$@" >/dev/null 2>"$WORK/stderr.txt" || { cat "$WORK/stderr.txt" >&2; return 1; }; } 2>"$WORK/time.txt"
  end=$(date +%s.%N)
  sleep 0.5 # the backends exit once the client has gone
  after=$(server_cpu)
  awk -v a="${before:-0}" -v b="${after:-0}" '{ printf "%.2f %.2f\n", b - a, $1 + $2 }' "$WORK/time.txt" >"$WORK/cpu.txt"
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }'
}
cpu() { read -r server client <"$WORK/cpu.txt"; echo "server ${server} CPU-s, client ${client} CPU-s"; }
median() { tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# The rows of `events` as psql \copy takes them, exported from a load of the same events.
ROWS=$WORK/events-$EVENTS-$SEED.copy
if [ ! -s "$ROWS" ]; then
  fresh_db
  "$BIN" replay --no-progress -c "$EVENTS_CFG" "$INPUT" 2>/dev/null
  psql_db -c "\\copy events (event_id, type, ts, eval_id, tenant_id, payload) TO '$ROWS'"
fi
N=$(wc -l <"$ROWS")
printf 'input: %d events, %.1f MB of NDJSON; %d rows, %.1f MB for \\copy; %s; load %s\n' \
  "$EVENTS" "$(awk -v b="$BYTES" 'BEGIN{print b/1e6}')" "$N" \
  "$(awk -v b="$(stat -c %s "$ROWS")" 'BEGIN{print b/1e6}')" \
  "$(psql_admin -Atc 'SHOW server_version')" "$(cut -d' ' -f1-3 /proc/loadavg)"

copy_ref() {
  psql_db -c "\\copy events (event_id, type, ts, eval_id, tenant_id, payload) FROM '$ROWS'"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
A=() P=() B=() C=() RB=() RC=()
for round in $(seq 1 "$ROUNDS"); do
  fresh_db
  A+=("$(seconds copy_ref)")
  printf 'round %d: \\copy %ss (%s)\n' "$round" "${A[-1]}" "$(cpu)"
  fresh_db
  psql_db -c "ALTER TABLE events ALTER COLUMN payload SET COMPRESSION pglz"
  P+=("$(seconds copy_ref)")
  printf '         \\copy, pglz %ss (%s)\n' "${P[-1]}" "$(cpu)"
  fresh_db
  B+=("$(seconds "$BIN" replay --no-progress --no-migrate -c "$EVENTS_CFG" "$INPUT")")
  RB+=("$(ratio "${A[-1]}" "${B[-1]}")")
  printf '         events only %ss (%s), %sx \\copy (this round)\n' "${B[-1]}" "$(cpu)" "${RB[-1]}"
  fresh_db
  C+=("$(seconds "$BIN" replay --no-progress --no-migrate -c "$ALL_CFG" "$INPUT")")
  RC+=("$(ratio "${A[-1]}" "${C[-1]}")")
  printf '         all tables %ss (%s), %sx \\copy (this round)\n' "${C[-1]}" "$(cpu)" "${RC[-1]}"
done
MA=$(echo "${A[*]}" | median)
MP=$(echo "${P[*]}" | median)
MB=$(echo "${B[*]}" | median)
MC=$(echo "${C[*]}" | median)
rate() { awk -v n="$N" -v s="$1" 'BEGIN { printf "%.0f", n / s }'; }
printf '(a) psql \\copy into events:            %8s rows/s (median %ss)\n' "$(rate "$MA")" "$MA"
printf "(a') psql \\copy, payload with pglz:     %8s rows/s (median %ss)\n" "$(rate "$MP")" "$MP"
printf '(b) evalsink postgres, events only:    %8s rows/s (median %ss), %sx \\copy\n' \
  "$(rate "$MB")" "$MB" "$(ratio "$MA" "$MB")"
printf '(c) evalsink postgres, every table:    %8s events/s (median %ss), %sx \\copy\n' \
  "$(rate "$MC")" "$MC" "$(ratio "$MA" "$MC")"
printf '    against (a'"'"'): events only %sx, every table %sx\n' "$(ratio "$MP" "$MB")" "$(ratio "$MP" "$MC")"
printf '    round by round: events only %s; every table %s\n' "${RB[*]}" "${RC[*]}"
psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
