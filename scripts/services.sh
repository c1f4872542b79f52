#!/usr/bin/env bash
# Ensure Redis and Postgres are up and reachable, and print the URLs settled on as
# `export VAR=value` lines (eval them). Idempotent.
#
# Order of preference, for each service:
#   1. the URL already in MAILFLEET_REDIS_URL / MAILFLEET_PG_ADMIN_URL, if it answers;
#   2. a server on the standard port (127.0.0.1:6379 / :5432 with trust auth);
#   3. our own instance on a private port with its data dir under $MAILFLEET_SERVICES_DIR
#      (default /tmp/mailfleet-services), installing Debian's packages first when missing.
# Also creates the database named by MAILFLEET_DB (default: mailfleet) if it is missing.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/services.sh [--stop | --test-tools]
  (no args)     ensure Redis and Postgres are reachable; print export lines for
                MAILFLEET_REDIS_URL, MAILFLEET_DATABASE_URL, DATABASE_URL (sqlx tests)
  --stop        stop the private instances this script started (never the shared ones)
  --test-tools  install what the tests run besides the stores, when missing: Debian's
                Prometheus (the observability test starts its own), openssl (SNS
                certificates), Chromium with ChromeDriver (the admin page test) and
                libfaketime (a CLI run with its clock off); --prometheus is an alias
env: MAILFLEET_SERVICES_DIR (default /tmp/mailfleet-services), MAILFLEET_DB (default mailfleet),
     MAILFLEET_SERVICES_PRIVATE=1 to skip the standard ports and always use private instances,
     MAILFLEET_OWN_REDIS_PORT / MAILFLEET_OWN_PG_PORT (defaults 16379 / 15432) for their ports,
     MAILFLEET_REDIS_APPENDONLY=yes to give a private Redis an append-only file
USAGE
}

DIR=${MAILFLEET_SERVICES_DIR:-/tmp/mailfleet-services}
DB=${MAILFLEET_DB:-mailfleet}
OWN_REDIS_PORT=${MAILFLEET_OWN_REDIS_PORT:-16379}
OWN_PG_PORT=${MAILFLEET_OWN_PG_PORT:-15432}
log() { echo "[services] $*" >&2; }

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null || { log "apt-get not available; install $* by hand"; exit 1; }
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"; DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2; apt_updated=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# PING over bash's /dev/tcp: needs no client binary.
redis_ping() { # host port
  (
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3 || true
    [[ "$reply" == "+PONG"* ]]
  ) 2>/dev/null
}

pg_ok() { # url
  psql "$1" -Atqc 'select 1' >/dev/null 2>&1
}

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then usage; exit 0; fi

pg_bin() {
  local b
  b=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [ -n "$b" ] || return 1
  echo "$b"
}

if [ "${1:-}" = "--test-tools" ] || [ "${1:-}" = "--prometheus" ]; then
  missing=()
  if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then missing+=(prometheus); fi
  command -v openssl >/dev/null || missing+=(openssl)
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  command -v faketime >/dev/null || missing+=(faketime)
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
  exit 0
fi

if [ "${1:-}" = "--stop" ]; then
  if [ -f "$DIR/redis.pid" ]; then kill "$(cat "$DIR/redis.pid")" 2>/dev/null || true; rm -f "$DIR/redis.pid"; fi
  if [ -d "$DIR/pg" ] && b=$(pg_bin); then runuser -u postgres -- "$b/pg_ctl" -D "$DIR/pg" -m fast stop >&2 || true; fi
  exit 0
fi

mkdir -p "$DIR"

# ---- Redis
redis_url=""
if [ -n "${MAILFLEET_REDIS_URL:-}" ]; then
  hp=${MAILFLEET_REDIS_URL#redis://}; hp=${hp##*@}; hp=${hp%%/*}
  if redis_ping "${hp%%:*}" "${hp##*:}"; then redis_url=$MAILFLEET_REDIS_URL; fi
fi
PRIVATE=${MAILFLEET_SERVICES_PRIVATE:-0}
if [ -z "$redis_url" ] && [ "$PRIVATE" != 1 ] && redis_ping 127.0.0.1 6379; then redis_url=redis://127.0.0.1:6379; fi
if [ -z "$redis_url" ]; then
  command -v redis-server >/dev/null || apt_install redis-server
  if ! redis_ping 127.0.0.1 "$OWN_REDIS_PORT"; then
    log "starting redis-server on 127.0.0.1:$OWN_REDIS_PORT (data in $DIR/redis)"
    mkdir -p "$DIR/redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$OWN_REDIS_PORT" --dir "$DIR/redis" \
      --save "" --appendonly "${MAILFLEET_REDIS_APPENDONLY:-no}" --enable-debug-command local --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" >&2
    for _ in $(seq 50); do redis_ping 127.0.0.1 "$OWN_REDIS_PORT" && break; sleep 0.1; done
  fi
  redis_ping 127.0.0.1 "$OWN_REDIS_PORT" || { log "redis did not start; see $DIR/redis.log"; exit 1; }
  redis_url=redis://127.0.0.1:$OWN_REDIS_PORT
fi

# ---- Postgres
command -v psql >/dev/null || apt_install postgresql-client
admin=""
if [ -n "${MAILFLEET_PG_ADMIN_URL:-}" ] && pg_ok "$MAILFLEET_PG_ADMIN_URL"; then admin=$MAILFLEET_PG_ADMIN_URL; fi
if [ -z "$admin" ] && [ "$PRIVATE" != 1 ] && pg_ok postgres://postgres@127.0.0.1:5432/postgres; then admin=postgres://postgres@127.0.0.1:5432/postgres; fi
if [ -z "$admin" ]; then
  b=$(pg_bin) || { apt_install postgresql; b=$(pg_bin); }
  own=postgres://postgres@127.0.0.1:$OWN_PG_PORT/postgres
  if ! pg_ok "$own"; then
    id postgres >/dev/null 2>&1 || useradd --system --home "$DIR" postgres
    if [ ! -s "$DIR/pg/PG_VERSION" ]; then
      log "initdb in $DIR/pg"
      mkdir -p "$DIR/pg"; chown postgres "$DIR" "$DIR/pg"; chmod 700 "$DIR/pg"
      runuser -u postgres -- "$b/initdb" -D "$DIR/pg" -U postgres --auth=trust >/dev/null
    fi
    log "starting postgres on 127.0.0.1:$OWN_PG_PORT"
    chown postgres "$DIR"
    runuser -u postgres -- "$b/pg_ctl" -D "$DIR/pg" -l "$DIR/pg.log" -w \
      -o "-p $OWN_PG_PORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >&2
  fi
  pg_ok "$own" || { log "postgres did not start; see $DIR/pg.log"; exit 1; }
  admin=$own
fi
base=${admin%/*}
if [ "$(psql "$admin" -Atqc "select 1 from pg_database where datname = '$DB'")" != 1 ]; then
  psql "$admin" -qc "create database \"$DB\"" >&2
fi

log "redis: $redis_url  postgres: $base/$DB"
echo "export MAILFLEET_REDIS_URL=$redis_url"
echo "export MAILFLEET_DATABASE_URL=$base/$DB"
echo "export MAILFLEET_PG_ADMIN_URL=$admin"
echo "export DATABASE_URL=$base/$DB"
