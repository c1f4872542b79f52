#!/usr/bin/env bash
# Enqueue one email with redis-cli, in wire format v1. Needs: redis-cli, uuidgen or python3.
# Usage: docs/examples/produce.sh [redis-url] [prefix]
set -euo pipefail
URL=${1:-redis://127.0.0.1:6379}
PREFIX=${2:-mf}
ID=$(python3 -c 'import uuid,time,os; t=int(time.time()*1000); b=t.to_bytes(6,"big")+os.urandom(10); b=bytearray(b); b[6]=(b[6]&0x0f)|0x70; b[8]=(b[8]&0x3f)|0x80; print(uuid.UUID(bytes=bytes(b)))')
NOW=$(( $(date +%s%N) / 1000000 ))
PAYLOAD='{"to":["ada@example.com"],"from":"Shop <shop@example.com>","subject":"Your order","text":"Thanks for your order!"}'
# Partition 0 of 1 (MAILFLEET_PARTITIONS=1). With P partitions, use FNV-1a(id) mod P.
redis-cli -u "$URL" XADD "$PREFIX:{0}:tx" '*' v 1 id "$ID" enqueued_at "$NOW" payload "$PAYLOAD" >/dev/null
echo "$ID"
