#!/usr/bin/env bash
# The fault suite: each scenario runs a local cluster (3 workers, the mock provider, a private
# Redis with an append-only file and a private Postgres, on free ports, never the shared ones),
# sends CHAOS_EMAILS emails paced over ~20 s while injecting its fault, waits for every job to
# be final, and prints ONE JSON line:
#   {"scenario":..., "emails":..., "sent":..., "lost":..., "duplicates":..., "ambiguous":..., "ok":...}
# lost and duplicates come from the mock provider's log and Postgres; ambiguous counts the
# attempts logged `unknown` (a worker stopped after claiming, a timeout after the request left),
# the only events after which a duplicate is legitimate. Every acknowledged enqueue counts: a job
# Redis lost before any worker saw it is lost (`unseen` says how many had no row at all). The
# producer's durability is the default (ledger) unless CHAOS_DURABILITY names another. Exits 1
# if any scenario is not ok.
#
# Scenarios (all by default, or name some as arguments):
#   kill            SIGKILL a random worker every 2 s and restart it (10 kills)
#   redis-stall     CLIENT PAUSE ALL 3 s, DEBUG SLEEP 2 s, CLIENT PAUSE WRITE 2 s
#   redis-restart   SHUTDOWN Redis (the AOF is flushed), 2 s down, start it again; twice
#   redis-loss      Redis loses acknowledged enqueues, twice: every worker frozen (SIGSTOP) for
#                   1.5 s while the producer's enqueues are acknowledged, then Redis SIGKILLed
#                   and its append-only file cut back to its size at the freeze (what a host
#                   that lost power keeps under appendfsync everysec), restarted, workers
#                   thawed; at durability ledger the reconciler sends them from their rows
#                   (lost 0); CHAOS_DURABILITY=redis shows the loss (lost > 0, ok false)
#   redis-oom       Redis at maxmemory 64mb (noeviction): 4 KB emails pushed with no worker
#                   running until Redis refuses, then workers drain while the producer goes
#                   on (2 s back-off after a refused chunk, which is not retried); adds accepted, refused, refused_recorded, refused_sent_anyway; ok only
#                   with every accepted job sent once, some refused, each refusal the documented
#                   "queue full" error, and no refused job recorded beyond those the error
#                   said a worker had already read
#   pg-restart      stop Postgres (fast), 2 s down, start it again; twice
#   provider-errors the mock answers 20% 503 and bursts of 429 (0.8 s every 4 s), none of which
#                   took the email, and takes 3% then answers 500, 502 or 504 (a gateway that
#                   lost the vendor's reply: ambiguous, never failed over); duplicates <= ambiguous
#   sigterm         rolling restart of every worker, twice; duplicates must be 0
#   poison          5% malformed entries mixed in; each must reach the dead-letter stream
#   leader          a schedule firing every second to an audience of 20 while the scheduler
#                   leader is SIGKILLed or frozen past its lease (SIGSTOP/SIGCONT) every 3 s, and
#                   Redis loses every key once (FLUSHALL); adds ticks_expected, ticks_fired,
#                   ticks_duplicated, max_tick_lag_ms and stale_writes_rejected to the line
#   ratelimit       4 workers, a provider limit of 1,000 emails/s enforced by the mock (every
#                   request counted in a sliding 1-second window), 33,000 emails (>= 30 s);
#                   adds limit_per_sec, max_window_count, achieved_per_sec, rejected_by_provider;
#                   ok only with no 429, every window <= the limit, and >= 95% of it achieved
#                   (the share is judged in the full run only; CHAOS_SHORT reports it)
#   cluster-failover  a 6-node Redis Cluster (3 masters, a replica each) of its own, 12 partitions,
#                   3 workers; one master SIGKILLed while traffic flows (its replica takes over);
#                   writes it had not replicated are lost with it, and the reconciler re-sends
#                   them from their ledger rows: ok only when every acknowledged job is sent
#   priority        transactional email under a provider limit: `mailfleet bench --scenario
#                   priority` with a limit of 500/s enforced by the mock, 4 workers, a bulk
#                   backlog of 100,000 (20,000 short), tx at 20/s for 60 s (20 s short), mock
#                   latency 20 ms; adds tx_p99_ms, bulk_p50_ms, bulk_per_sec, limit_per_sec,
#                   max_window_count, rejected_by_provider; ok only with nothing lost or
#                   duplicated, no 429, every window <= the limit, bulk >= 90% of (limit - tx
#                   rate) (full run only), and tx p99 under a tenth of bulk's p50 (tx did not
#                   queue behind bulk)
#   fairness        fair bulk across tenants: `mailfleet bench --scenario fairness`, tenant `big`
#                   with a backlog of 200,000 (20,000 short), 5 s later 50 tenants (10 short)
#                   with 1,000 each (500 short), a limit of 2,000/s enforced by the mock, 4
#                   workers, one SIGKILLed 15 s in (8 s short) and replaced (visibility timeout
#                   5 s); adds tenants, fair_share_s, max_small_tenant_finish_s,
#                   big_tenant_per_sec, utilisation, limit_per_sec, max_window_count,
#                   rejected_by_provider; ok only with nothing lost, duplicates <= ambiguous,
#                   big still sending while the small ones did (the windows are reported;
#                   ratelimit and priority judge them), and (full run only) utilisation >= 90%;
#                   the slowest small tenant's finish is reported (the kill adds the visibility
#                   timeout and the reclaim behind a full in-flight pool; the target is judged
#                   by `mailfleet bench --scenario fairness` without a kill)
#   failover        two providers (SendGrid and Postmark dialects); the primary answers 503 for
#                   20 s then recovers; adds moved_after_ms, returned_after_ms,
#                   primary_during_outage, breaker_open_seen (workers whose metrics showed the
#                   primary's breaker open); ok only with nothing lost or dead
set -euo pipefail

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  sed -n '2,70p' "$0" | sed 's/^# \{0,1\}//'
  echo "env: CHAOS_EMAILS (default 20000), CHAOS_SHORT=1 (fewer faults, for CI), CHAOS_KEEP=1 (keep logs),"
  echo "     CHAOS_PROFILE=dev (use the debug build), CHAOS_DEADLINE_SECS (default 240 per scenario),"
  echo "     CHAOS_DURABILITY=ledger|replicated|redis (the producer's; default ledger)"
  exit 0
fi

cd "$(dirname "$0")/.."
EMAILS=${CHAOS_EMAILS:-20000}
SHORT=${CHAOS_SHORT:-0}
SCENARIOS=${*:-kill redis-stall redis-restart redis-loss redis-oom pg-restart provider-errors sigterm poison leader ratelimit priority fairness failover cluster-failover}
if [ -n "${CHAOS_DURABILITY:-}" ]; then export MAILFLEET_DURABILITY=$CHAOS_DURABILITY; fi
WORKERS=3
RL_LIMIT=1000
RL_EMAILS=${CHAOS_RL_EMAILS:-33000}
if [ "$SHORT" = 1 ]; then CHUNKS=8; PAUSE=0.5; KILLS=4; ROUNDS=1; LEADER_SECS=30; else CHUNKS=20; PAUSE=1; KILLS=10; ROUNDS=2; LEADER_SECS=120; fi
PR_LIMIT=500; PR_TX_RATE=20
# Rates (the share of a limit achieved) are judged in the full runs only: the short form, run by
# CI on a shared 2-core machine, reports them. The landed code achieved 920/s of 1,000 there on
# a busy day; a rate is the machine's as much as ours. Exactness, losses and duplicates are
# judged in both.
# The full runs judge the rate too: at least 92% of the limit (the margin, 5% of the window by
# default, caps it at 95.2%; docs/rate-limiting.md).
if [ "$SHORT" = 1 ]; then PR_EMAILS=20000; PR_TX_SECS=20; RATE_SHARE=0; else PR_EMAILS=100000; PR_TX_SECS=60; RATE_SHARE=0.92; fi
FA_LIMIT=2000
if [ "$SHORT" = 1 ]; then FA_BIG=20000; FA_TENANTS=10; FA_EACH=500; FA_KILL=8; else FA_BIG=200000; FA_TENANTS=50; FA_EACH=1000; FA_KILL=15; fi
LEASE_TTL_MS=2000
MEMBERS=20
DEADLINE_SECS=${CHAOS_DEADLINE_SECS:-240}

log() { echo "[chaos] $*" >&2; }
free_port() {
  # A port that can be bound now, with p + 10000 bindable too (a cluster node also binds its bus
  # port there), both below the kernel's ephemeral range: a port above it may be the local end
  # of one of the many outgoing connections a scenario makes, which a connect test cannot see
  # and a listener cannot bind (a cluster node that never started failed cluster-failover).
  python3 - "${CLAIMED_PORTS:-}" <<'PY'
import random, socket, sys
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
taken = {int(x) for x in sys.argv[1].split()}
def bindable(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()
top = max(20001, min(55535, low - 10001))
for _ in range(10000):
    p = random.randint(20000, top)
    if p in taken or p + 10000 in taken:
        continue
    if bindable(p) and bindable(p + 10000):
        print(p)
        sys.exit(0)
sys.exit("no free port pair below the ephemeral range")
PY
}

if [ "${CHAOS_PROFILE:-release}" = dev ]; then
  log "building (dev)"; cargo build --quiet --bin mailfleet; BIN=$PWD/target/debug/mailfleet
else
  log "building (release)"; cargo build --release --quiet --bin mailfleet; BIN=$PWD/target/release/mailfleet
fi

RUN=$(mktemp -d "${TMPDIR:-/tmp}/mailfleet-chaos.XXXXXX")
chmod 755 "$RUN"  # the private Postgres runs as the postgres user
export MAILFLEET_SERVICES_DIR=$RUN/services MAILFLEET_SERVICES_PRIVATE=1 MAILFLEET_REDIS_APPENDONLY=yes
MAILFLEET_OWN_REDIS_PORT=$(free_port); MAILFLEET_OWN_PG_PORT=$(free_port)
export MAILFLEET_OWN_REDIS_PORT MAILFLEET_OWN_PG_PORT
unset MAILFLEET_REDIS_URL MAILFLEET_PG_ADMIN_URL
services() { MAILFLEET_DB=postgres scripts/services.sh; }
eval "$(services)"
ADMIN=$MAILFLEET_PG_ADMIN_URL
REDIS=$MAILFLEET_REDIS_URL
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)

declare -A WPID GEN MPORT REJ CPID
CPORTS=()
MOCK_PID=""
MOCK2_PID=""
cleanup() {
  for p in "${WPID[@]}" $MOCK_PID $MOCK2_PID "${CPID[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  scripts/services.sh --stop >/dev/null 2>&1 || true
  if [ "${CHAOS_KEEP:-0}" = 1 ]; then log "logs kept in $RUN"; else rm -rf "$RUN"; fi
}
trap cleanup EXIT

start_worker() { # slot
  local gen=$(( ${GEN[$1]:-0} + 1 ))
  GEN[$1]=$gen
  MPORT[$1]=$(free_port)
  MAILFLEET_LEASE_TTL_MS=$LEASE_TTL_MS \
  "$BIN" worker --consumer "chaos-$1-$gen" --listen "127.0.0.1:${MPORT[$1]}" \
    --visibility-timeout-ms 3000 --reclaim-interval-ms 1000 \
    --retry-base-ms 200 --retry-max-ms 3000 --max-attempts 30 --drain-timeout-secs 15 \
    --reconcile-after-secs 20 --reconcile-interval-ms 5000 \
    >>"$RUN/$SC-worker-$1.log" 2>&1 &
  WPID[$1]=$!
}

jobs_chunk() { # first count -> JSONL; idempotency keys make a retried chunk safe; SC_PAD pads the text
  awk -v first="$1" -v n="$2" -v sc="$SC" -v pad="${SC_PAD:-0}" 'BEGIN {
    filler = ""; for (k = 0; k < pad; k++) filler = filler "x";
    for (i = first; i < first + n; i++) {
      lane = (i % 5 == 0) ? "tx" : "bulk";
      printf "{\"lane\":\"%s\",\"idempotency_key\":\"%s-%d\",\"to\":[\"user%d@example.com\"],\"from\":\"Shop <shop@example.com>\",\"subject\":\"Chaos %d\",\"text\":\"Hello %d%s\"}\n", lane, sc, i, i, i, i, filler;
    }
  }'
}

produce() { # paced over CHUNKS chunks; a chunk that fails (Redis down) is retried as a whole
  local total=${SC_EMAILS:-$EMAILS} chunks=${SC_CHUNKS:-$CHUNKS} pause=${SC_PAUSE:-$PAUSE}
  local per=$(( (total + chunks - 1) / chunks )) first=0 n
  while [ "$first" -lt "$total" ]; do
    n=$(( total - first < per ? total - first : per ))
    jobs_chunk "$first" "$n" >"$RUN/$SC-chunk.jsonl"
    until "$BIN" send --file "$RUN/$SC-chunk.jsonl" >"$RUN/$SC-chunk.ids" 2>>"$RUN/$SC-send.err"; do sleep 0.5; done
    cat "$RUN/$SC-chunk.ids" >>"$RUN/$SC-ids.txt"
    first=$(( first + n ))
    sleep "$pause"
  done
}

# redis-oom: chunks Redis refuses are not retried; their keys and the error's "except N" are kept.
produce_until_refused() {
  local total=$SC_EMAILS per=1000 first=0 n err
  : >"$RUN/$SC-refused-keys.txt"; : >"$RUN/$SC-refusals.txt"
  while [ "$first" -lt "$total" ]; do
    n=$(( total - first < per ? total - first : per ))
    jobs_chunk "$first" "$n" >"$RUN/$SC-chunk.jsonl"
    while :; do
      if "$BIN" send --file "$RUN/$SC-chunk.jsonl" >"$RUN/$SC-chunk.ids" 2>"$RUN/$SC-chunk.err"; then
        cat "$RUN/$SC-chunk.ids" >>"$RUN/$SC-ids.txt"; break
      fi
      err=$(grep -m1 '^error:' "$RUN/$SC-chunk.err" || tail -n1 "$RUN/$SC-chunk.err")
      cat "$RUN/$SC-chunk.err" >>"$RUN/$SC-send.err"
      if grep -q 'queue is full' <<<"$err"; then
        echo "$err" >>"$RUN/$SC-refusals.txt"
        awk -v first="$first" -v n="$n" -v sc="$SC" 'BEGIN { for (i = first; i < first + n; i++) printf "%s-%d\n", sc, i }' \
          >>"$RUN/$SC-refused-keys.txt"
        sleep 2  # backs off, as the API's Retry-After asks, while the workers drain
        break
      fi
      sleep 0.5  # Redis unreachable, not full: the same chunk again
    done
    first=$(( first + n ))
  done
}

rcli() { redis-cli -u "$REDIS" "$@"; }

cluster_start() { # 6 redis-server nodes on free ports, 3 masters with a replica each; sets CLUSTER_URL
  local p addrs=() urls=()
  CPORTS=()
  local tries up
  for _ in 1 2 3 4 5 6; do
    # A node that does not come up (its port taken meanwhile) is started again on another one.
    for tries in 1 2 3 4 5; do
      p=$(CLAIMED_PORTS="${CPORTS[*]}" free_port); mkdir -p "$RUN/cluster/$p"
      # A replica syncs at once (the default waits 5 s to batch replicas): it can take over early.
      redis-server --port "$p" --bind 127.0.0.1 --dir "$RUN/cluster/$p" --cluster-enabled yes \
        --cluster-config-file nodes.conf --cluster-node-timeout 2000 --repl-diskless-sync-delay 0 \
        --appendonly no --save "" --daemonize no >"$RUN/cluster/$p.log" 2>&1 &
      CPID[$p]=$!
      disown "$!"  # killing a node on purpose is not news: no job-control message
      up=0
      for _ in $(seq 100); do
        redis-cli -p "$p" ping >/dev/null 2>&1 && { up=1; break; }
        kill -0 "${CPID[$p]}" 2>/dev/null || break
        sleep 0.1
      done
      [ "$up" = 1 ] && break
      log "cluster node on $p did not start (try $tries): $(tail -n 1 "$RUN/cluster/$p.log")"
      kill "${CPID[$p]}" 2>/dev/null || true
    done
    [ "$up" = 1 ] || { log "creating the cluster failed: a node would not start"; return 1; }
    CPORTS+=("$p")
    addrs+=("127.0.0.1:$p"); urls+=("redis://127.0.0.1:$p")
  done
  if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$RUN/cluster/create.log" 2>&1; then
    log "creating the cluster failed: $(tail -n 3 "$RUN/cluster/create.log")"; return 1
  fi
  cluster_wait_ok 30 || { log "the cluster did not become ok"; return 1; }
  CLUSTER_URL=$(IFS=,; echo "${urls[*]}")
}

cluster_wait_ok() { # secs: every live node reports cluster_state:ok and every replica is linked
  local end=$(( $(date +%s) + $1 )) p ok repl
  while :; do
    ok=1
    for p in "${CPORTS[@]}"; do
      kill -0 "${CPID[$p]}" 2>/dev/null || continue
      redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
      repl=$(redis-cli -p "$p" info replication 2>/dev/null) || ok=0
      if grep -q 'role:slave' <<<"$repl" && ! grep -q 'master_link_status:up' <<<"$repl"; then ok=0; fi
    done
    [ "$ok" = 1 ] && return 0
    [ "$(date +%s)" -ge "$end" ] && return 1
    sleep 0.2
  done
}

cluster_master() { # the port of a live master that serves slots
  local p
  for p in "${CPORTS[@]}"; do
    kill -0 "${CPID[$p]}" 2>/dev/null || continue
    redis-cli -p "$p" cluster nodes 2>/dev/null \
      | awk 'NF > 8 && $3 ~ /master/ && $3 !~ /fail/ { sub(/@.*/, "", $2); sub(/.*:/, "", $2); print $2; exit }'
    return
  done
}

cluster_stop() {
  local p
  for p in "${CPID[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  CPID=(); CPORTS=()
}

poison() { # n malformed entries of assorted kinds into the lanes
  local n=$1 i key
  for i in $(seq "$n"); do
    key="$MAILFLEET_PREFIX:{0}:$([ $(( i % 2 )) = 0 ] && echo tx || echo bulk)"
    case $(( i % 7 )) in
      0) echo "XADD $key * v 1 id 00000000-0000-7000-8000-$(printf '%012d' "$i") enqueued_at 1" ;;
      1) echo "XADD $key * v 1 id 00000000-0000-7000-8000-$(printf '%012d' "$i") enqueued_at 1 payload '{\"to\":'" ;;
      2) echo "XADD $key * v 9 id 00000000-0000-7000-8000-$(printf '%012d' "$i") enqueued_at 1 payload '{}'" ;;
      3) echo "XADD $key * v 1 id not-a-uuid enqueued_at 1 payload '{}'" ;;
      4) echo "XADD $key * v 1 id 00000000-0000-7000-8000-$(printf '%012d' "$i") enqueued_at 1 payload '{\"to\":[\"not-an-address\"],\"from\":\"a@example.com\",\"subject\":\"s\",\"text\":\"t\"}'" ;;
      5) echo "XADD $key * v 1 id 00000000-0000-7000-8000-$(printf '%012d' "$i") enqueued_at 1 payload '{\"to\":[\"a@example.com\"],\"from\":\"a@example.com\",\"subject\":\"x\r\nBcc: evil@example.com\",\"text\":\"t\"}'" ;;
      6) echo "XADD $key * v 1 id 00000000-0000-7000-8000-$(printf '%012d' "$i") enqueued_at 1 payload '{\"to\":[\"a@example.com\"],\"from\":\"a@example.com\",\"subject\":\"s\",\"text\":\"$(head -c 300000 /dev/zero | tr '\0' x)\"}'" ;;
    esac
  done | rcli >/dev/null
}

redis_loss() { # workers frozen, enqueues acknowledged, then Redis loses everything since the freeze
  local k aof size slot
  for k in 1 2; do
    sleep 3
    aof=$(ls -1 "$MAILFLEET_SERVICES_DIR"/redis/appendonlydir/*.incr.aof 2>/dev/null | sort -V | tail -n1)
    [ -n "$aof" ] || { log "redis-loss: no append-only file found"; return 1; }
    size=$(stat -c %s "$aof")
    for slot in $(seq "$WORKERS"); do kill -STOP "${WPID[$slot]}" 2>/dev/null || true; done
    sleep 1.5
    kill -KILL "$(cat "$MAILFLEET_SERVICES_DIR/redis.pid")" 2>/dev/null || true
    for _ in $(seq 50); do redis_up || break; sleep 0.1; done
    truncate -s "$size" "$aof"
    log "redis-loss: Redis killed; its append-only file cut back to the freeze ($(basename "$aof"), $size bytes)"
    for slot in $(seq "$WORKERS"); do kill -CONT "${WPID[$slot]}" 2>/dev/null || true; done
    sleep 1
    services >/dev/null 2>&1
    rcli CONFIG SET auto-aof-rewrite-percentage 0 >/dev/null  # the file cut back stays the last one
  done
}
redis_up() { rcli PING >/dev/null 2>&1; }

redis_restart() {
  rcli SHUTDOWN >/dev/null 2>&1 || true
  sleep 2
  services >/dev/null 2>&1  # same ports and data dir; the URLs do not change
}

pg_restart() {
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$MAILFLEET_SERVICES_DIR/pg" -m fast -w stop >/dev/null
  sleep 2
  services >/dev/null 2>&1  # same ports and data dir; the URLs do not change
}

scrape() { # slot metric-prefix: the worker's metric lines starting so
  (exec 3<>"/dev/tcp/127.0.0.1/${MPORT[$1]}" \
    && printf 'GET /metrics HTTP/1.0\r\nHost: worker\r\n\r\n' >&3 && timeout 2 cat <&3) 2>/dev/null \
    | grep -F "$2" || true
}

breakers_open() { # how many workers show the primary's breaker open (or half-open) now
  local slot n=0
  for slot in $(seq "$WORKERS"); do
    scrape "$slot" 'mailfleet_provider_breaker_state{provider="primary"}' | awk '$2 >= 1 { f = 1 } END { exit !f }' && n=$(( n + 1 ))
  done
  echo "$n"
}

scrape_rejections() { # slot: remember this incarnation's count of rejected stale writes
  local v
  # HTTP/1.0 over bash's /dev/tcp: no client binary needed; the server closes after replying.
  v=$( (exec 3<>"/dev/tcp/127.0.0.1/${MPORT[$1]}" \
        && printf 'GET /metrics HTTP/1.0\r\nHost: worker\r\n\r\n' >&3 && timeout 2 cat <&3) 2>/dev/null \
      | awk '$1 == "mailfleet_fenced_writes_rejected_total" { print $2 }') || true  # not listening yet
  [ -n "$v" ] && REJ["$1-${GEN[$1]}"]=${v%.*}
  return 0
}

leader_slot() { # the slot whose worker wrote the fence last (chaos-<slot>-<gen>/<nonce>)
  psql "$MAILFLEET_DATABASE_URL" -Atqc "select holder from leader_fence where name = 'scheduler'" 2>/dev/null \
    | sed -n 's/^chaos-\([0-9]*\)-.*/\1/p'
}

leader_faults() { # kill or freeze the leader every 3 s for LEADER_SECS; Redis loses everything once
  local end=$(( $(date +%s) + LEADER_SECS )) half=$(( $(date +%s) + LEADER_SECS / 2 )) n=0 slot flushed=0
  while [ "$(date +%s)" -lt "$end" ]; do
    sleep 3
    slot=$(leader_slot) || true; [ -n "$slot" ] || continue
    if [ "$flushed" = 0 ] && [ "$(date +%s)" -ge "$half" ]; then
      rcli FLUSHALL >/dev/null; flushed=1; log "leader: FLUSHALL"; continue
    fi
    if [ $(( n % 2 )) = 0 ]; then
      scrape_rejections "$slot"
      kill -KILL "${WPID[$slot]}" 2>/dev/null || true
      wait "${WPID[$slot]}" 2>/dev/null || true
      start_worker "$slot"
    else
      kill -STOP "${WPID[$slot]}" 2>/dev/null || true
      sleep "$(awk -v t="$LEASE_TTL_MS" 'BEGIN { printf "%.1f", t / 1000 + 1.2 }')"
      kill -CONT "${WPID[$slot]}" 2>/dev/null || true
      sleep 1.5
      scrape_rejections "$slot"
    fi
    n=$(( n + 1 ))
  done
}

ticks_open() { # until: "t" once the schedule has moved past `until` and no earlier fan-out is open
  psql "$MAILFLEET_DATABASE_URL" -Atqc "select s.next_tick >= '$1' and not exists (
      select 1 from schedule_runs r where r.schedule_id = s.id and r.tick < '$1' and r.status = 'fanning_out')
    from schedules s where s.name = 'pulse'" 2>/dev/null || true
}

ticks_diagnose() { # until: the runs around any gap or open fan-out, for a failed leader scenario
  psql "$MAILFLEET_DATABASE_URL" -Atqc "select to_char(tick, 'HH24:MI:SS') || ' ' || status || ' lag_ms='
      || round(extract(epoch from fired_at - tick) * 1000) || ' done_ms=' || coalesce(round(extract(epoch from finished_at - tick) * 1000)::text, '-') || ' token=' || token
    from schedule_runs r join schedules s on s.id = r.schedule_id
    where s.name = 'pulse' and r.tick < '$1' order by tick" 2>/dev/null | tr '\n' ';' >&2 || true
  echo >&2
}

leader_setup() { # a template, an audience of MEMBERS, a schedule every second
  "$BIN" template put digest --subject "Digest for {{ name }}" --text "Hello {{ name }}" >/dev/null
  "$BIN" audience create team >/dev/null
  awk -v n="$MEMBERS" 'BEGIN { print "email,name"; for (i = 1; i <= n; i++) printf "member%d@example.com,Member %d\n", i, i }' \
    >"$RUN/leader-audience.csv"
  "$BIN" audience import team "$RUN/leader-audience.csv" >/dev/null
  "$BIN" schedule add pulse --cron "* * * * * *" --template digest --audience team \
    --from "News <news@example.com>" --stale-after 60s >/dev/null
}

inject() { # the scenario's faults, while traffic flows
  local k slot
  case $SC in
    kill)
      for k in $(seq "$KILLS"); do
        sleep 2
        slot=$(( RANDOM % WORKERS + 1 ))
        kill -KILL "${WPID[$slot]}" 2>/dev/null || true
        wait "${WPID[$slot]}" 2>/dev/null || true
        start_worker "$slot"
      done ;;
    sigterm)
      for k in $(seq "$ROUNDS"); do
        for slot in $(seq "$WORKERS"); do
          sleep 1.5
          kill -TERM "${WPID[$slot]}" 2>/dev/null || true
          wait "${WPID[$slot]}" 2>/dev/null || true
          start_worker "$slot"
        done
      done ;;
    redis-stall)
      sleep 2; rcli CLIENT PAUSE 3000 ALL >/dev/null
      sleep 5; rcli DEBUG SLEEP 2 >/dev/null
      sleep 3; rcli CLIENT PAUSE 2000 WRITE >/dev/null ;;
    redis-restart)
      for k in 1 2; do sleep 3; redis_restart; done ;;
    redis-loss)
      redis_loss ;;
    redis-oom) # no worker until Redis refuses a chunk (or 60 s), then every worker drains
      for _ in $(seq 600); do [ -s "$RUN/$SC-refusals.txt" ] && break; sleep 0.1; done
      log "redis-oom: $(wc -l <"$RUN/$SC-refusals.txt") refusal(s) so far; starting the workers"
      for slot in $(seq "$WORKERS"); do start_worker "$slot"; done ;;
    pg-restart)
      for k in 1 2; do sleep 3; pg_restart; done ;;
    poison)
      sleep 2; poison "$POISON" ;;
    leader)
      leader_faults ;;
    cluster-failover)
      sleep 3
      KILLED=$(cluster_master)
      kill -KILL "${CPID[$KILLED]}" 2>/dev/null || true
      KILLED_AT=$(date +%s.%N)
      log "cluster-failover: SIGKILLed master 127.0.0.1:$KILLED"
      if cluster_wait_ok 60; then
        log "cluster-failover: cluster ok again after $(awk -v s="$KILLED_AT" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')s"
      else
        log "cluster-failover: the cluster did not recover"
      fi ;;
    failover) # halfway into the outage, the breakers must show it
      sleep 14; BREAKERS_OPEN=$(breakers_open); log "failover: $BREAKERS_OPEN workers show the breaker open" ;;
  esac
}

# The priority scenario is the bench's (its own mock, workers, scratch database and prefix, on
# this suite's private Redis and Postgres), judged here.
run_priority() {
  local out
  log "scenario priority: $PR_EMAILS bulk emails, tx at $PR_TX_RATE/s for ${PR_TX_SECS}s, limit $PR_LIMIT/s, 4 workers"
  if ! out=$(MAILFLEET_REDIS_URL=$REDIS MAILFLEET_PARTITIONS=1 MAILFLEET_DATABASE_URL=${ADMIN%/*}/postgres \
      RUST_LOG=warn "$BIN" bench --scenario priority --limit "$PR_LIMIT" --workers 4 --emails "$PR_EMAILS" \
      --tx-rate "$PR_TX_RATE" --tx-secs "$PR_TX_SECS" --mock-latency-ms 20 --timeout-secs "$DEADLINE_SECS" --json \
      2>"$RUN/priority-bench.err"); then
    log "priority: the bench failed: $(tail -n 3 "$RUN/priority-bench.err")"
    echo '{"scenario":"priority","ok":false}'
    return 1
  fi
  python3 - "$out" "$PR_LIMIT" "$PR_TX_RATE" "$RATE_SHARE" <<'PY'
import json, sys
f, limit, tx_rate = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
judge_rate = float(sys.argv[4]) > 0
line = {
    "scenario": "priority", "emails": f["emails"], "sent": f["emails"] - f["lost"],
    "lost": f["lost"], "duplicates": f["duplicates"], "tx_emails": f.get("tx_emails"),
    "tx_p50_ms": f.get("tx_p50_ms"), "tx_p99_ms": f.get("tx_p99_ms"),
    "bulk_p50_ms": f.get("bulk_p50_ms"), "bulk_per_sec": f.get("bulk_per_sec"),
    "limit_per_sec": limit, "max_window_count": f["max_window_count"],
    "rejected_by_provider": f["rejected_by_provider"],
}
line["ok"] = (f["lost"] == 0 and f["duplicates"] == 0 and f["rejected_by_provider"] == 0
              and f["max_window_count"] <= limit
              and (not judge_rate or (f.get("bulk_per_sec") or 0) >= 0.9 * (limit - tx_rate))
              and f.get("tx_p99_ms") is not None and f.get("bulk_p50_ms") is not None
              and f["tx_p99_ms"] * 10 <= f["bulk_p50_ms"])
print(json.dumps(line, separators=(",", ":")))
sys.exit(0 if line["ok"] else 1)
PY
}

# The fairness scenario is the bench's too, with one worker SIGKILLed midway and replaced.
run_fairness() {
  local out
  log "scenario fairness: big $FA_BIG, then $FA_TENANTS tenants x $FA_EACH, limit $FA_LIMIT/s, 4 workers, one killed at ${FA_KILL}s"
  if ! out=$(MAILFLEET_REDIS_URL=$REDIS MAILFLEET_PARTITIONS=1 MAILFLEET_DATABASE_URL=${ADMIN%/*}/postgres \
      MAILFLEET_VISIBILITY_TIMEOUT_MS=5000 MAILFLEET_RECLAIM_INTERVAL_MS=1000 \
      RUST_LOG=warn "$BIN" bench --scenario fairness --limit "$FA_LIMIT" --workers 4 --emails "$FA_BIG" \
      --tenants "$FA_TENANTS" --tenant-emails "$FA_EACH" --tenants-after-secs 5 --kill-after-secs "$FA_KILL" \
      --timeout-secs "$DEADLINE_SECS" --json 2>"$RUN/fairness-bench.err"); then
    log "fairness: the bench failed: $(tail -n 3 "$RUN/fairness-bench.err")"
    echo '{"scenario":"fairness","ok":false}'
    return 1
  fi
  python3 - "$out" "$FA_LIMIT" "$RATE_SHARE" <<'PY'
import json, sys
f, limit = json.loads(sys.argv[1]), int(sys.argv[2])
full = float(sys.argv[3]) > 0
line = {
    "scenario": "fairness", "emails": f["emails"], "sent": f["emails"] - f["lost"],
    "lost": f["lost"], "duplicates": f["duplicates"], "ambiguous": f["ambiguous"],
    "tenants": f.get("tenants"), "fair_share_s": f.get("fair_share_s"),
    "max_small_tenant_finish_s": f.get("max_small_tenant_finish_s"),
    "big_tenant_per_sec": f.get("big_tenant_per_sec"), "utilisation": f.get("utilisation"),
    "limit_per_sec": limit, "max_window_count": f["max_window_count"],
    "rejected_by_provider": f["rejected_by_provider"],
}
share, finish = f.get("fair_share_s"), f.get("max_small_tenant_finish_s")
# Exactness at the provider is the ratelimit and priority scenarios' to judge: here the small
# tenants' enqueue burst lands mid-run on the same 2 cores, and the windows are reported.
line["ok"] = (f["lost"] == 0 and f["duplicates"] <= f["ambiguous"]
              and (f.get("big_tenant_per_sec") or 0) > 0
              and share is not None and finish is not None
              and (not full or (f.get("utilisation") or 0) >= 0.9))
print(json.dumps(line, separators=(",", ":")))
sys.exit(0 if line["ok"] else 1)
PY
}

judge_oom() { # the report over the accepted jobs, plus what became of the refused ones
  local line recorded
  line=$("$BIN" report --ids "$RUN/$SC-ids.txt" --mock-log "$RUN/$SC-mock.jsonl" --seconds "$SECS" --label "$SC" --json) || true
  recorded=$(printf '%s\n' "create temp table k(key text);" "\\copy k from '$RUN/$SC-refused-keys.txt'" \
      "select count(*) from emails e join k on e.idempotency_key = k.key;" \
    | psql "$MAILFLEET_DATABASE_URL" -Atq 2>/dev/null | tail -n1)
  python3 - "$line" "$RUN/$SC-refusals.txt" "$RUN/$SC-refused-keys.txt" "${recorded:-0}" <<'PY'
import json, re, sys
line = json.loads(sys.argv[1]) if sys.argv[1].strip() else {"scenario": "redis-oom", "ok": False}
refusals = [l for l in open(sys.argv[2]) if l.strip()]
refused = sum(1 for l in open(sys.argv[3]) if l.strip())
anyway = sum(int(m.group(1)) for l in refusals for m in [re.search(r"except (\d+) job", l)] if m)
documented = all("the queue is full (Redis is at maxmemory); nothing of the batch was enqueued" in l for l in refusals)
line.update({"accepted": line.get("emails"), "refused": refused,
             "refused_recorded": int(sys.argv[4]), "refused_sent_anyway": anyway})
line["ok"] = bool(line.get("ok")) and refused > 0 and documented and int(sys.argv[4]) <= anyway
print(json.dumps(line, separators=(",", ":")))
sys.exit(0 if line["ok"] else 1)
PY
}

final_count() {
  psql "$MAILFLEET_DATABASE_URL" -Atqc \
    "select count(*) from emails where status in ('sent','failed','dead','suppressed','unknown')" 2>/dev/null || echo 0
}
dead_count() { rcli XLEN "$MAILFLEET_PREFIX:{0}:dead" 2>/dev/null || echo 0; }

failures=0
for SC in $SCENARIOS; do
  case $SC in kill|redis-stall|redis-restart|redis-loss|redis-oom|pg-restart|provider-errors|sigterm|poison|leader) ;;
    ratelimit|failover|cluster-failover) ;;
    priority) run_priority || failures=$(( failures + 1 )); continue ;;
    fairness) run_fairness || failures=$(( failures + 1 )); continue ;;
    *) log "unknown scenario $SC"; exit 2 ;; esac
  WORKERS=3; unset SC_EMAILS SC_CHUNKS SC_PAUSE SC_PAD MAILFLEET_CONFIG
  export MAILFLEET_REDIS_URL=$REDIS MAILFLEET_PARTITIONS=1
  case $SC in
    ratelimit) WORKERS=4; SC_EMAILS=$RL_EMAILS; SC_CHUNKS=8; SC_PAUSE=0.2 ;;
    cluster-failover)
      SC_EMAILS=4000; SC_CHUNKS=20; SC_PAUSE=0.3
      cluster_start
      export MAILFLEET_REDIS_URL=$CLUSTER_URL MAILFLEET_PARTITIONS=12 ;;
    failover) SC_EMAILS=6000; SC_CHUNKS=30; SC_PAUSE=1 ;;
    redis-oom)
      SC_EMAILS=30000; SC_PAD=4000
      rcli CONFIG SET maxmemory 64mb >/dev/null; rcli CONFIG SET maxmemory-policy noeviction >/dev/null ;;
    redis-loss) rcli CONFIG SET auto-aof-rewrite-percentage 0 >/dev/null ;;
  esac
  if [ "$SC" = leader ]; then log "scenario $SC: a schedule every second to $MEMBERS members for ${LEADER_SECS}s"
  else log "scenario $SC: ${SC_EMAILS:-$EMAILS} emails, $WORKERS workers"; fi
  db="chaos_${SC//-/_}"
  psql "$ADMIN" -qc "drop database if exists $db with (force)" -c "create database $db" >/dev/null 2>&1
  export MAILFLEET_DATABASE_URL=${ADMIN%/*}/$db
  export MAILFLEET_PREFIX="chaos-$SC-$$"
  export RUST_LOG=${RUST_LOG:-warn}
  "$BIN" migrate >/dev/null
  : >"$RUN/$SC-ids.txt"
  mock_args=(--latency-ms 20 --jitter-ms 30)
  strict=()
  POISON=0
  case $SC in
    # Slow sends keep hundreds in flight, so a kill or a restart always interrupts some.
    kill|sigterm) mock_args=(--latency-ms 100 --jitter-ms 300) ;;&
    sigterm) strict=(--no-duplicates) ;;
    provider-errors) mock_args+=(--failure-rate 0.2 --throttle-every-ms 4000 --throttle-for-ms 800 --accepted-error-rate 0.03) ;;
    poison) POISON=$(( EMAILS * 5 / 100 )) ;;
    # The provider has cores of its own: the workers' load must not move the clock it counts by.
    ratelimit) mock_args=(--latency-ms 5 --jitter-ms 10 --rate-limit "$RL_LIMIT" --rate-window-ms 1000 --nice -5) ;;
    failover) mock_args=(--latency-ms 10 --jitter-ms 20 --outage-after-ms 5000 --outage-for-ms 20000) ;;
  esac
  "$BIN" mock-provider --listen 127.0.0.1:0 --log "$RUN/$SC-mock.jsonl" "${mock_args[@]}" >"$RUN/$SC-mock.out" 2>&1 &
  MOCK_PID=$!
  for _ in $(seq 100); do grep -q listening "$RUN/$SC-mock.out" 2>/dev/null && break; sleep 0.1; done
  export MAILFLEET_SENDGRID_URL
  MAILFLEET_SENDGRID_URL=$(grep -o 'http://[0-9.:]*' "$RUN/$SC-mock.out" | head -n1)
  export MAILFLEET_SENDGRID_API_KEY=chaos-key
  report_args=()
  case $SC in
    ratelimit)
      printf '[[providers]]\nname = "sendgrid"\nkind = "sendgrid"\nbase_url = "%s"\napi_key = "chaos-key"\nlimit = %d\nwindow_ms = 1000\n' \
        "$MAILFLEET_SENDGRID_URL" "$RL_LIMIT" >"$RUN/$SC.toml"
      export MAILFLEET_CONFIG=$RUN/$SC.toml
      report_args=(--limit-per-sec "$RL_LIMIT" --min-share "$RATE_SHARE" --mock-stats "$RUN/$SC-mock.out") ;;
    failover)
      "$BIN" mock-provider --listen 127.0.0.1:0 --log "$RUN/$SC-mock2.jsonl" --latency-ms 10 --jitter-ms 20 >"$RUN/$SC-mock2.out" 2>&1 &
      MOCK2_PID=$!
      for _ in $(seq 100); do grep -q listening "$RUN/$SC-mock2.out" 2>/dev/null && break; sleep 0.1; done
      printf '[[providers]]\nname = "primary"\nkind = "sendgrid"\nbase_url = "%s"\napi_key = "chaos-key"\n\n[[providers]]\nname = "secondary"\nkind = "postmark"\nbase_url = "%s"\napi_key = "chaos-token"\n' \
        "$MAILFLEET_SENDGRID_URL" "$(grep -o 'http://[0-9.:]*' "$RUN/$SC-mock2.out" | head -n1)" >"$RUN/$SC.toml"
      export MAILFLEET_CONFIG=$RUN/$SC.toml
      BREAKERS_OPEN=0 ;;
  esac
  if [ "$SC" != redis-oom ]; then for slot in $(seq "$WORKERS"); do start_worker "$slot"; done; fi

  START=$(date +%s.%N)
  schedule_args=()
  if [ "$SC" = leader ]; then
    REJ=()
    leader_setup
    inject
    # The faults end here. Every tick before UNTIL must then be fired and fanned out exactly
    # once: wait (bounded) until the leader has moved past UNTIL with no fan-out of an earlier
    # tick still open, then pause, so the fan-outs judged are never cut short by the pause.
    UNTIL=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
    for _ in $(seq 40); do
      [ "$(ticks_open "$UNTIL")" = t ] && break
      sleep 0.5
    done
    "$BIN" schedule pause pulse >/dev/null
    sleep 2  # a fan-out under way when the schedule paused finishes
    psql "$MAILFLEET_DATABASE_URL" -Atqc "select id from emails where idempotency_key like 'sched:%'" >"$RUN/$SC-ids.txt"
  else
    if [ "$SC" = redis-oom ]; then produce_until_refused & else produce & fi
    PRODUCER=$!
    inject
    wait "$PRODUCER"
  fi
  want=$(sort -u "$RUN/$SC-ids.txt" | wc -l)
  deadline=$(( $(date +%s) + DEADLINE_SECS ))
  while [ "$(final_count)" -lt "$want" ] || [ "$(dead_count)" -lt "$POISON" ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then log "$SC: not settled after ${DEADLINE_SECS}s"; break; fi
    sleep 0.5
  done
  SECS=$(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }')

  if [ "$SC" = leader ]; then
    for slot in $(seq "$WORKERS"); do scrape_rejections "$slot"; done
    rejected=0; for v in "${REJ[@]}"; do rejected=$(( rejected + v )); done
    schedule_args=(--schedule pulse --until "$UNTIL" --lease-ttl-ms "$LEASE_TTL_MS" --stale-writes-rejected "$rejected")
  fi
  for slot in $(seq "$WORKERS"); do kill -TERM "${WPID[$slot]}" 2>/dev/null || true; done
  for slot in $(seq "$WORKERS"); do wait "${WPID[$slot]}" 2>/dev/null || true; done
  kill -TERM "$MOCK_PID" 2>/dev/null || true; wait "$MOCK_PID" 2>/dev/null || true
  if [ -n "$MOCK2_PID" ]; then
    kill -TERM "$MOCK2_PID" 2>/dev/null || true; wait "$MOCK2_PID" 2>/dev/null || true
    cat "$RUN/$SC-mock2.jsonl" >>"$RUN/$SC-mock.jsonl"
    read -r from until < <(sed -n 's/.*outage from_ms=\([0-9]*\) until_ms=\([0-9]*\).*/\1 \2/p' "$RUN/$SC-mock.out")
    report_args=(--failover-primary sendgrid --outage-from-ms "$from" --outage-until-ms "$until" --breaker-open-seen "$BREAKERS_OPEN")
  fi
  WPID=(); MOCK_PID=""; MOCK2_PID=""
  if [ "$SC" = redis-oom ]; then
    rcli CONFIG SET maxmemory 0 >/dev/null
    if ! judge_oom; then failures=$(( failures + 1 )); fi
  elif ! "$BIN" report --ids "$RUN/$SC-ids.txt" --mock-log "$RUN/$SC-mock.jsonl" --seconds "$SECS" \
      --label "$SC" --json --expect-dead-letters "$POISON" "${strict[@]}" "${schedule_args[@]}" "${report_args[@]}"; then
    failures=$(( failures + 1 ))
    if [ "$SC" = leader ]; then log "leader: runs before $UNTIL:"; ticks_diagnose "$UNTIL"; fi
  fi
  if [ "$SC" = cluster-failover ]; then cluster_stop
  else rcli --scan --pattern "$MAILFLEET_PREFIX:*" | xargs -r redis-cli -u "$REDIS" del >/dev/null 2>&1 || true; fi
done
[ "$failures" = 0 ]
