#!/usr/bin/env bash
# End-to-end replay throughput: generates a realistic event file with `evalsink generate`
# (code of a few KB, outputs from ~100 B to tens of KB, some over 1 MiB), then replays it
# through classify → blackhole (and classify → redact → blackhole), printing MB/s, events/s
# and peak memory. Usage: benches/replay.sh [EVENTS] (default 300000, about 0.9 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-300000}
RUNS=${RUNS:-3}
cargo build --release --quiet
BIN=target/release/evalsink
WORK=${BENCH_DIR:-target/bench}
mkdir -p "$WORK"
FILE="$WORK/events-$EVENTS.ndjson"
if [ ! -s "$FILE" ]; then
  "$BIN" generate --events "$EVENTS" --seed 1 --large-outputs 0.002 > "$FILE"
fi
BYTES=$(stat -c %s "$FILE")
echo "input: $FILE, $EVENTS events, $((BYTES / 1000000)) MB"

config() { # $1 = transforms chain ("classify" or "classify redact")
  local prev=replay out="$WORK/bench-$(echo "$1" | tr ' ' '-').toml"
  { echo "data_dir = \"$WORK/data\""; echo '[sources.replay]'; echo 'type = "stdin"'
    for t in $1; do printf '[transforms.%s]\ntype = "%s"\ninputs = ["%s"]\n' "$t" "$t" "$prev"; prev=$t; done
    printf '[sinks.blackhole]\ntype = "blackhole"\ninputs = ["%s"]\n' "$prev"; } > "$out"
  echo "$out"
}

measure() { # $1 = label, $2 = config
  local best=0 rates=()
  for _ in $(seq "$RUNS"); do
    local start end secs rss
    start=$(date +%s.%N)
    /usr/bin/time -o "$WORK/time.txt" -f '%M' "$BIN" replay --no-progress -c "$2" "$FILE" >/dev/null 2>&1
    rss=$(tail -n1 "$WORK/time.txt")
    end=$(date +%s.%N)
    secs=$(echo "$end - $start" | bc -l)
    rates+=("$(echo "$BYTES / $secs / 1000000" | bc -l)")
    echo "$(printf '  %-22s %7.1f MB/s %9.0f events/s  peak RSS %6.1f MiB' "$1" "$(echo "$BYTES / $secs / 1000000" | bc -l)" "$(echo "$EVENTS / $secs" | bc -l)" "$(echo "$rss / 1024" | bc -l)")"
  done
  local median
  median=$(printf '%s\n' "${rates[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '  %-22s median %.1f MB/s\n' "$1" "$median"
  echo "$median" > "$WORK/median-$(echo "$1" | tr ' >' '__')"
}

measure "classify" "$(config classify)"
measure "classify+redact" "$(config 'classify redact')"
a=$(cat "$WORK/median-classify"); b=$(cat "$WORK/median-classify+redact")
printf 'redaction costs %.1f%% of the throughput\n' "$(echo "(1 - $b / $a) * 100" | bc -l)"
