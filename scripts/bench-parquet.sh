#!/usr/bin/env bash
# End-to-end benchmark of the parquet sink: replays a generated NDJSON file through
# classify → parquet (local folder) and prints the rate in MB/s of NDJSON in (1 MB = 10^6 bytes),
# events/s and peak memory. When DuckDB is installed for python3 (scripts/services.sh installs
# it), also times DuckDB turning the same file into zstd Parquet, on one thread and on all.
#
#   scripts/bench-parquet.sh                 # 200000 events, seed 1
#   EVENTS=1000000 scripts/bench-parquet.sh  # a larger replay (memory should stay flat)
#   DAYS=60 scripts/bench-parquet.sh         # events spread over 60 days (many partitions)
#   STORE=s3 scripts/bench-parquet.sh        # to moto's S3 server on loopback (multipart uploads)
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${EVENTS:-200000}
SEED=${SEED:-1}
DAYS=${DAYS:-0}
STORE=${STORE:-local}
WORK=${BENCH_DIR:-target/bench-parquet}
PY=${PYTHON:-python3}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

if [ ! -x /usr/bin/time ]; then
  echo "installing GNU time (for peak memory)" >&2
  apt-get install -y -qq time >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
fi

cargo build --release --quiet
BIN=$PWD/target/release/evalsink
INPUT=$WORK/events-$EVENTS-$SEED-$DAYS.ndjson
[ -s "$INPUT" ] || "$BIN" generate --events "$EVENTS" --seed "$SEED" --days "$DAYS" >"$INPUT"
BYTES=$(stat -c %s "$INPUT")
LINES=$(wc -l <"$INPUT")

if [ "$STORE" = s3 ]; then
  scripts/services.sh >/dev/null
  S3=http://127.0.0.1:${EVALSINK_S3_PORT:-9100}
  BUCKET=bench-parquet-$$
  curl -fsS -X PUT "$S3/$BUCKET" >/dev/null
  export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
  STORE_TOML="store = { url = \"s3://$BUCKET/bench\", region = \"us-east-1\", endpoint = \"$S3\" }"
else
  STORE_TOML="store = \"file://$WORK/store\""
fi

cat >"$WORK/parquet.toml" <<EOF
data_dir = "$WORK/data"
[sources.in]
type = "stdin"
[transforms.classify]
type = "classify"
inputs = ["in"]
[sinks.analytics]
type = "parquet"
inputs = ["classify"]
$STORE_TOML
EOF

# Runs a command under /usr/bin/time; prints "seconds peak_kib".
timed() {
  local stats=$WORK/time.txt
  /usr/bin/time -f '%e %M' -o "$stats" "$@" >/dev/null 2>"$WORK/stderr.txt" || {
    cat "$WORK/stderr.txt" >&2
    return 1
  }
  cat "$stats"
}

rate() { # bytes seconds -> MB/s
  awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / 1e6 / s }'
}

printf 'input: %s (%d events, %.1f MB)\n' "$INPUT" "$LINES" "$(awk -v b="$BYTES" 'BEGIN{print b/1e6}')"

rm -rf "$WORK/store" "$WORK/data"
read -r SECS KIB < <(timed "$BIN" replay --no-progress -c "$WORK/parquet.toml" "$INPUT")
if [ "$STORE" = s3 ]; then
  # S3 lists up to 1000 keys per page; count them all.
  read -r FILES PARQUET < <("$PY" -c "
import urllib.parse, urllib.request, xml.etree.ElementTree as ET
ns = '{http://s3.amazonaws.com/doc/2006-03-01/}'
files = size = 0; token = None
while True:
    url = '$S3/$BUCKET?list-type=2&prefix=bench/events/'
    if token: url += '&continuation-token=' + urllib.parse.quote(token)
    root = ET.parse(urllib.request.urlopen(url)).getroot()
    for c in root.iter(ns + 'Contents'):
        if c.find(ns + 'Key').text.endswith('.parquet'):
            files += 1; size += int(c.find(ns + 'Size').text)
    token = root.findtext(ns + 'NextContinuationToken')
    if not token: break
print(files, size)
")
else
  FILES=$(find "$WORK/store/events" -name '*.parquet' | wc -l)
  PARQUET=$(find "$WORK/store/events" -name '*.parquet' -printf '%s\n' | awk '{s+=$1} END {print s}')
fi
EVALSINK_RATE=$(rate "$BYTES" "$SECS")
printf 'evalsink parquet sink: %.2f s, %s MB/s, %.0f events/s, peak RSS %.0f MiB, %d files, %.1f MB of Parquet\n' \
  "$SECS" "$EVALSINK_RATE" "$(awk -v n="$LINES" -v s="$SECS" 'BEGIN{print n/s}')" \
  "$(awk -v k="$KIB" 'BEGIN{print k/1024}')" "$FILES" "$(awk -v b="$PARQUET" 'BEGIN{print b/1e6}')"

if ! "$PY" -c 'import duckdb' >/dev/null 2>&1; then
  echo "duckdb: not installed for $PY (scripts/services.sh installs it); skipped"
  exit 0
fi
for THREADS in 1 default; do
  OUT=$WORK/duckdb-$THREADS.parquet
  rm -f "$OUT"
  SET=""
  [ "$THREADS" = default ] || SET="SET threads=$THREADS;"
  read -r SECS KIB < <(timed "$PY" -c "
import duckdb
con = duckdb.connect()
con.execute(\"$SET\") if \"$SET\" else None
con.execute(\"COPY (SELECT * FROM read_ndjson('$INPUT')) TO '$OUT' (FORMAT parquet, COMPRESSION zstd)\")
")
  DUCK_RATE=$(rate "$BYTES" "$SECS")
  printf 'duckdb COPY to zstd Parquet (threads=%s): %.2f s, %s MB/s, peak RSS %.0f MiB, %.1f MB of Parquet; evalsink/duckdb = %.2f\n' \
    "$THREADS" "$SECS" "$DUCK_RATE" "$(awk -v k="$KIB" 'BEGIN{print k/1024}')" \
    "$(awk -v b="$(stat -c %s "$OUT")" 'BEGIN{print b/1e6}')" \
    "$(awk -v a="$EVALSINK_RATE" -v b="$DUCK_RATE" 'BEGIN{print a/b}')"
done
