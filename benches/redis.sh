#!/usr/bin/env bash
# Redis sink throughput: replays EXECUTOR_HEALTH and QUEUE_METRICS events (the events the redis
# sink stores) through classify → redis and prints events/s, with, as a reference measured in
# the same run, `redis-cli --pipe` of the plain writes of the same events (HSET + EXPIRE of the
# executor hash per health event; HSET of the queue hash + XADD to its stream per queue event),
# which skips what the sink adds: latest-by-timestamp and duplicate checks.
#
#   benches/redis.sh              # 1,000,000 events (60% health of 200 executors, 40% queue)
#   EVENTS=300000 RUNS=5 benches/redis.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-1000000}
RUNS=${RUNS:-3}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
PREFIX=evalsink-bench:
WORK=${BENCH_DIR:-target/bench-redis}
mkdir -p "$WORK"
cargo build --release --quiet
BIN=target/release/evalsink
cli() { redis-cli -u "$REDIS_URL" "$@"; }

FILE=$WORK/health-queue-$EVENTS.ndjson
if [ ! -s "$FILE" ]; then
  # One event every 100 µs from 2026-01-01, so that the stream IDs (event milliseconds) grow.
  awk -v n="$EVENTS" 'BEGIN {
    srand(1); base = 1767225600
    for (i = 0; i < n; i++) {
      us = i * 100; s = base + int(us / 1000000)
      ts = strftime("%Y-%m-%dT%H:%M:%S", s, 1) sprintf(".%06dZ", us % 1000000)
      if (i % 5 < 3) {
        printf "{\"type\":\"EXECUTOR_HEALTH\",\"event_id\":\"bench-%d\",\"timestamp\":\"%s\",\"executor_id\":\"executor-%d\",\"status\":\"%s\",\"metrics\":{\"cpu\":%.2f,\"memory_mb\":%d,\"running\":%d}}\n",
          i, ts, int(rand() * 200), (rand() < 0.95 ? "healthy" : "degraded"), rand() * 4, 512 + int(rand() * 8000), int(rand() * 8)
      } else {
        printf "{\"type\":\"QUEUE_METRICS\",\"event_id\":\"bench-%d\",\"timestamp\":\"%s\",\"queue_length\":%d,\"processing_count\":%d}\n",
          i, ts, int(rand() * 500), int(rand() * 64)
      }
    }
  }' >"$FILE"
fi
BYTES=$(stat -c %s "$FILE")

# The same writes as plain Redis commands, for redis-cli --pipe.
PIPE=$WORK/health-queue-$EVENTS.redis
if [ ! -s "$PIPE" ]; then
  python3 - "$FILE" "$PIPE" "$PREFIX" <<'EOF'
import json, sys
src, dst, prefix = sys.argv[1:]
def cmd(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)
with open(src) as f, open(dst, "wb") as o:
    for line in f:
        e = json.loads(line)
        if e["type"] == "EXECUTOR_HEALTH":
            key = prefix + "executor:" + e["executor_id"]
            o.write(cmd("HSET", key, "status", e["status"], "metrics", json.dumps(e["metrics"]), "ts", e["timestamp"], "event_id", e["event_id"]))
            o.write(cmd("EXPIRE", key, 120))
        else:
            o.write(cmd("HSET", prefix + "queue", "queue_length", e["queue_length"], "processing_count", e["processing_count"], "ts", e["timestamp"]))
            o.write(cmd("XADD", prefix + "queue:history", "MAXLEN", "~", 10000, "*", "event_id", e["event_id"], "queue_length", e["queue_length"], "processing_count", e["processing_count"], "ts", e["timestamp"]))
EOF
fi

CONFIG=$WORK/redis.toml
cat >"$CONFIG" <<EOF
data_dir = "$WORK/data"
[sources.in]
type = "stdin"
[transforms.classify]
type = "classify"
inputs = ["in"]
[sinks.hot]
type = "redis"
inputs = ["classify"]
endpoint = "$REDIS_URL"
key_prefix = "$PREFIX"
EOF

clear_keys() { cli --scan --pattern "$PREFIX*" | xargs -r -n 500 redis-cli -u "$REDIS_URL" DEL >/dev/null; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "input: $FILE, $EVENTS events, $((BYTES / 1000000)) MB; load average $(cut -d' ' -f1 /proc/loadavg)"
sink=() ref=()
for _ in $(seq "$RUNS"); do
  clear_keys
  start=$(date +%s.%N)
  cli --pipe <"$PIPE" >/dev/null
  secs=$(echo "$(date +%s.%N) - $start" | bc -l)
  ref+=("$(echo "$EVENTS / $secs" | bc -l)")
  printf '  redis-cli --pipe       %9.0f events/s\n' "${ref[-1]}"

  clear_keys
  /usr/bin/time -o "$WORK/time.txt" -f '%e %M' "$BIN" replay --no-progress -c "$CONFIG" "$FILE" >"$WORK/summary.txt" 2>&1
  read -r secs rss < <(tail -n1 "$WORK/time.txt")
  sink+=("$(echo "$EVENTS / $secs" | bc -l)")
  printf '  evalsink redis sink    %9.0f events/s  %6.1f MB/s  peak RSS %5.1f MiB  (stream: %s entries)\n' \
    "${sink[-1]}" "$(echo "$BYTES / $secs / 1000000" | bc -l)" "$(echo "$rss / 1024" | bc -l)" \
    "$(cli XLEN "${PREFIX}queue:history")"
done
s=$(printf '%s\n' "${sink[@]}" | median) r=$(printf '%s\n' "${ref[@]}" | median)
printf 'median: evalsink %.0f events/s, redis-cli --pipe %.0f events/s, ratio %.2f (load average %s)\n' \
  "$s" "$r" "$(echo "$s / $r" | bc -l)" "$(cut -d' ' -f1 /proc/loadavg)"
clear_keys
