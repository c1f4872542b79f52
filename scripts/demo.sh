#!/usr/bin/env bash
# The main job: a local mailfleet cluster sending real traffic to the mock provider.
#
# Services up, release build, migrations, mock provider, DEMO_WORKERS worker processes and the
# HTTP API; enqueues DEMO_EMAILS emails (both lanes; a named template with per-recipient vars;
# some inline; 10% through the HTTP API, the rest through `mailfleet send --file`), shows live
# progress, waits for every email to be recorded, stops everything (SIGTERM: workers drain),
# prints a summary table and ends with one line:
#   demo: sent=<n> failed=<n> lost=<n> duplicates=<n> seconds=<s> emails_per_sec=<r> p99_ms=<ms>
# lost and duplicates compare the mock provider's log with the ids that were enqueued.
set -euo pipefail

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  echo "env: DEMO_EMAILS (default 20000), DEMO_WORKERS (default 3), DEMO_TIMEOUT_SECS (default 600)"
  exit 0
fi

cd "$(dirname "$0")/.."
EMAILS=${DEMO_EMAILS:-20000}
WORKERS=${DEMO_WORKERS:-3}
TIMEOUT=${DEMO_TIMEOUT_SECS:-600}
API_SHARE=10  # percent enqueued through the HTTP API

eval "$(MAILFLEET_DB=mailfleet_demo scripts/services.sh)"
echo "[demo] building (release)"
cargo build --release --quiet --bin mailfleet
BIN=$PWD/target/release/mailfleet

RUN=$(mktemp -d "${TMPDIR:-/tmp}/mailfleet-demo.XXXXXX")
export MAILFLEET_PREFIX="demo-$$"
export RUST_LOG=${RUST_LOG:-warn}
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  # The run's Redis keys are its own (unique prefix); the Postgres rows stay for inspection.
  if command -v redis-cli >/dev/null; then
    redis-cli -u "$MAILFLEET_REDIS_URL" --scan --pattern "$MAILFLEET_PREFIX:*" \
      | xargs -r redis-cli -u "$MAILFLEET_REDIS_URL" del >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# A fresh demo database each run, so the summary counts only this run.
psql "$MAILFLEET_PG_ADMIN_URL" -qc "drop database if exists mailfleet_demo with (force)" -c "create database mailfleet_demo" >/dev/null
"$BIN" migrate >/dev/null
"$BIN" template put welcome --subject 'Your order {{ order }}, {{ name }}' \
  --html '<h1>Thanks, {{ name }}!</h1><p>Order <b>{{ order }}</b> ships soon.</p>' \
  --text 'Thanks, {{ name }}! Order {{ order }} ships soon.' >/dev/null

wait_line() { # file pattern -> prints the URL from the first matching line
  for _ in $(seq 100); do
    if grep -q "$2" "$1" 2>/dev/null; then grep -o 'http://[0-9.:]*' "$1" | head -n1; return 0; fi
    sleep 0.1
  done
  echo "[demo] $1 never said '$2':" >&2; cat "$1" >&2; return 1
}

"$BIN" mock-provider --listen 127.0.0.1:0 --log "$RUN/mock.jsonl" >"$RUN/mock.out" 2>&1 &
MOCK_PID=$!; PIDS+=("$MOCK_PID")
MOCK_URL=$(wait_line "$RUN/mock.out" "listening")

export MAILFLEET_SENDGRID_URL=$MOCK_URL MAILFLEET_SENDGRID_API_KEY=demo-sendgrid-key
for i in $(seq "$WORKERS"); do
  "$BIN" worker --consumer "demo-worker-$i" --listen 127.0.0.1:0 >"$RUN/worker-$i.log" 2>&1 &
  PIDS+=("$!")
done
MAILFLEET_API_KEYS=demo-api-key "$BIN" api --listen 127.0.0.1:0 >"$RUN/api.out" 2>&1 &
API_PID=$!; PIDS+=("$API_PID")
API_URL=$(wait_line "$RUN/api.out" "listening")
echo "[demo] mock provider $MOCK_URL, api $API_URL, $WORKERS workers; logs in $RUN"

# Jobs: 20% tx, 80% bulk; 3 in 4 use the named template with per-recipient vars.
API_N=$(( EMAILS * API_SHARE / 100 ))
CLI_N=$(( EMAILS - API_N ))
gen() { # first count -> JSONL
  awk -v first="$1" -v n="$2" 'BEGIN {
    for (i = first; i < first + n; i++) {
      lane = (i % 5 == 0) ? "tx" : "bulk";
      if (i % 4 == 3)
        printf "{\"lane\":\"%s\",\"to\":[\"user%d@example.com\"],\"from\":\"Shop <shop@example.com>\",\"subject\":\"Receipt %d\",\"html\":\"<p>Receipt %d</p>\",\"text\":\"Receipt %d\",\"tags\":[\"demo\"]}\n", lane, i, i, i, i;
      else
        printf "{\"lane\":\"%s\",\"to\":[\"User %d <user%d@example.com>\"],\"from\":\"Shop <shop@example.com>\",\"template\":\"welcome\",\"vars\":{\"name\":\"User %d\",\"order\":%d},\"tags\":[\"demo\"]}\n", lane, i, i, i, i;
    }
  }'
}
gen 0 "$CLI_N" >"$RUN/jobs.jsonl"

START=$(date +%s.%N)
"$BIN" send --file "$RUN/jobs.jsonl" >"$RUN/ids.txt" 2>"$RUN/send.err" \
  || { echo "[demo] enqueue failed:" >&2; tail -c 2000 "$RUN/send.err" >&2; exit 1; }
# The API share, in batches of 500.
sent_api=0
while [ "$sent_api" -lt "$API_N" ]; do
  n=$(( API_N - sent_api < 500 ? API_N - sent_api : 500 ))
  { printf '{"emails":['; gen $(( CLI_N + sent_api )) "$n" | paste -sd, -; printf ']}'; } >"$RUN/batch.json"
  curl -fsS -H "Authorization: Bearer demo-api-key" -H 'Content-Type: application/json' \
    --data-binary @"$RUN/batch.json" "$API_URL/v1/emails/batch" | grep -o '"id":"[^"]*"' | cut -d'"' -f4 >>"$RUN/ids.txt"
  sent_api=$(( sent_api + n ))
done
ENQUEUED=$(wc -l <"$RUN/ids.txt")
echo "[demo] enqueued $ENQUEUED emails ($CLI_N by CLI, $API_N by HTTP API)"

final_count() {
  psql "$MAILFLEET_DATABASE_URL" -Atqc \
    "select count(*) from emails where status in ('sent','failed','dead','suppressed','unknown')"
}
deadline=$(( $(date +%s) + TIMEOUT ))
last_print=0
while :; do
  done_n=$(final_count)
  now=$(date +%s.%N)
  rate=$(awk -v d="$done_n" -v s="$START" -v n="$now" 'BEGIN { t = n - s; printf "%.0f", (t > 0 ? d / t : 0) }')
  if [ -t 2 ]; then
    printf '\r[demo] recorded %d/%d  (%s emails/s)   ' "$done_n" "$ENQUEUED" "$rate" >&2
  elif [ $(( $(date +%s) - last_print )) -ge 5 ]; then
    echo "[demo] recorded $done_n/$ENQUEUED ($rate emails/s)" >&2; last_print=$(date +%s)
  fi
  [ "$done_n" -ge "$ENQUEUED" ] && break
  if [ "$(date +%s)" -ge "$deadline" ]; then echo >&2; echo "[demo] timed out after ${TIMEOUT}s" >&2; break; fi
  sleep 0.25
done
END=$(date +%s.%N)
echo >&2
SECONDS_TAKEN=$(awk -v s="$START" -v e="$END" 'BEGIN { printf "%.2f", e - s }')

# Stop everything; the workers drain and the mock flushes its log.
for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
PIDS=()

"$BIN" report --ids "$RUN/ids.txt" --mock-log "$RUN/mock.jsonl" --seconds "$SECONDS_TAKEN" --label demo
