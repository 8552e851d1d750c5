#!/usr/bin/env bash
# End-to-end replay throughput: generates a realistic event file with `evalsink generate`
# (code of a few KB, outputs from ~100 B to tens of KB, some over 1 MiB), then replays it
# through classify → blackhole (and classify → redact → blackhole), printing MB/s, events/s
# and peak memory. Usage: benches/replay.sh [EVENTS] (default 300000, about 0.9 GB).
#
# SINKS=blackhole (the default) measures evalsink alone. SINKS=parquet replays into the parquet
# sink (a local folder), SINKS=default into the default config's sinks (postgres, redis and
# parquet, after split; a fresh database for every run, at $PG_BASE_URL): the pipeline as it is
# run, where redaction shares the cores with the sinks' work.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-300000}
RUNS=${RUNS:-3}
SINKS=${SINKS:-blackhole}
PG_BASE=${PG_BASE_URL:-postgres://root@127.0.0.1:5432}
DB=evalsink_bench_replay
cargo build --release --quiet
BIN=target/release/evalsink
WORK=${BENCH_DIR:-target/bench}
mkdir -p "$WORK"
FILE="$WORK/events-$EVENTS.ndjson"
if [ ! -s "$FILE" ]; then
  "$BIN" generate --events "$EVENTS" --seed 1 --large-outputs 0.002 > "$FILE"
fi
BYTES=$(stat -L -c %s "$FILE")
echo "input: $FILE, $EVENTS events, $((BYTES / 1000000)) MB"

config() { # $1 = transforms chain ("classify" or "classify redact")
  local chain=$1 prev=replay out="$WORK/bench-$SINKS-$(echo "$1" | tr ' ' '-').toml"
  [ "$SINKS" = default ] && chain="$chain split"
  { echo "data_dir = \"$WORK/data\""; echo '[sources.replay]'; echo 'type = "stdin"'
    for t in $chain; do printf '[transforms.%s]\ntype = "%s"\ninputs = ["%s"]\n' "$t" "$t" "$prev"; prev=$t; done
    [ "$SINKS" = default ] && printf 'store = "file://%s/data"\n' "$WORK"
    case $SINKS in
      blackhole) printf '[sinks.blackhole]\ntype = "blackhole"\ninputs = ["%s"]\n' "$prev" ;;
      parquet) printf '[sinks.parquet]\ntype = "parquet"\ninputs = ["%s"]\nstore = "file://%s/data"\n' "$prev" "$WORK" ;;
      default)
        printf '[sinks.postgres]\ntype = "postgres"\ninputs = ["%s"]\nendpoint = "%s/%s"\n' "$prev" "$PG_BASE" "$DB"
        printf '[sinks.redis]\ntype = "redis"\ninputs = ["%s"]\nendpoint = "%s"\nkey_prefix = "evalsink-bench:"\n' "$prev" "${REDIS_URL:-redis://127.0.0.1:6379}"
        printf '[sinks.parquet]\ntype = "parquet"\ninputs = ["%s"]\nstore = "file://%s/data"\n' "$prev" "$WORK" ;;
      *) echo "SINKS is blackhole, parquet or default, not $SINKS" >&2; exit 2 ;;
    esac; } > "$out"
  echo "$out"
}
# Every run starts from nothing stored: no database, no objects, no files.
fresh() {
  rm -rf "$WORK/data"
  if [ "$SINKS" = default ]; then
    psql -X -q -v ON_ERROR_STOP=1 "$PG_BASE/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
    "$BIN" migrate --database-url "$PG_BASE/$DB" >/dev/null 2>&1
  fi
}

# One run: wall rate, CPU rate and peak RSS; the rate is appended to $WORK/rates-<label>.
run_once() { # $1 = label, $2 = config
  local secs user sys rss
  fresh
  # Wall time, and user+sys CPU time (steadier than wall time when the machine is busy).
  /usr/bin/time -o "$WORK/time.txt" -f '%e %U %S %M' "$BIN" replay --no-progress -c "$2" "$FILE" >/dev/null 2>&1
  read -r secs user sys rss < <(tail -n1 "$WORK/time.txt")
  local rate cpu_rate
  rate=$(echo "$BYTES / $secs / 1000000" | bc -l)
  cpu_rate=$(echo "$BYTES / ($user + $sys) / 1000000" | bc -l)
  echo "$rate" >>"$WORK/rates-$1"
  echo "$cpu_rate" >>"$WORK/cpu-rates-$1"
  printf '  %-22s %7.1f MB/s %9.0f events/s  %7.1f MB per CPU-second  peak RSS %6.1f MiB\n' "$1" \
    "$rate" "$(echo "$EVENTS / $secs" | bc -l)" "$cpu_rate" "$(echo "$rss / 1024" | bc -l)"
}
median_of() { sort -g "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# The two pipelines take turns, so that a slow spell of a noisy machine hits both alike.
CLASSIFY=$(config classify)
REDACT=$(config 'classify redact')
rm -f "$WORK"/rates-* "$WORK"/cpu-rates-*
for _ in $(seq "$RUNS"); do
  run_once classify "$CLASSIFY"
  run_once classify+redact "$REDACT"
done
for label in classify classify+redact; do
  printf '  %-22s median %.1f MB/s, %.1f MB per CPU-second\n' "$label" \
    "$(median_of "$WORK/rates-$label")" "$(median_of "$WORK/cpu-rates-$label")"
done
a=$(median_of "$WORK/rates-classify"); b=$(median_of "$WORK/rates-classify+redact")
printf "redaction costs %.1f%% of the throughput into $SINKS (load average %s)\n" "$(echo "(1 - $b / $a) * 100" | bc -l)" \
  "$(cut -d' ' -f1 /proc/loadavg)"
