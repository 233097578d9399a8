#!/usr/bin/env bash
# Tombstone HTTP benchmarks (wrk on loopback; server and load share the machine's cores).
#   bench/http/run.sh get      cached GET vs cold GET vs a bare axum JSON endpoint
#   bench/http/run.sh search   list with q= over 100,000 records
#   bench/http/run.sh purge    purge 1,000,000 expired rows beside 100,000 live ones, with reads running
#                              (PURGE_RATE=rows/s cap, PURGE_BATCH=rows per batch, EXPIRED=rows due,
#                               DELAY_MS=pause per connection between GETs: paced instead of saturating)
# Needs wrk (apt-get install wrk). Prints figures; nothing is asserted.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
threads=2; conns=32; secs=${SECS:-10}

(cd "$root" && cargo build --release --quiet --bin tombstone)
(cd "$here" && cargo build --release --quiet)
tomb="$root/target/release/tombstone"
bins="$here/target/release"

config() { # $1 = dir, $2 = extra toml
  cat > "$1/tombstone.toml" <<TOML
[storage]
url = "sqlite://data/t.db"
[search]
path = "data/search"
[retention]
default = "30d"
$2
[collections.products]
unique = [["sku"]]
[collections.products.fields]
sku  = { type = "string", required = true }
name = { type = "string", required = true, search = true }
TOML
}

start() { # $1 = dir, $2 = port
  "$tomb" serve --config "$1/tombstone.toml" --listen "127.0.0.1:$2" --log-format json 2> "$1/server.log" &
  for _ in $(seq 1 100); do grep -q "listening on" "$1/server.log" 2>/dev/null && return; sleep 0.1; done
  echo "server did not start"; cat "$1/server.log"; exit 1
}

key() { "$tomb" keys create --config "$1/tombstone.toml" --tenant bench --scopes admin --json | sed 's/.*"secret":"\([^"]*\)".*/\1/'; }

wrk_run() { # label, wrk args...
  local label=$1; shift
  local out; out=$(wrk -t$threads -c$conns -d${secs}s --latency "$@")
  local rps p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  printf "%-34s %10s req/s   p50 %8s   p99 %8s\n" "$label" "$rps" "$p50" "$p99"
  echo "$rps" > "$work/last_rps"
}

case "${1:-get}" in
get)
  mkdir -p "$work/warm" "$work/cold"
  config "$work/warm" ""
  config "$work/cold" $'[cache]\ncapacity = 0'
  for d in warm cold; do
    "$tomb" migrate --config "$work/$d/tombstone.toml" > /dev/null
    "$bins/seed" "$work/$d/data/t.db" bench 10000 0 > /dev/null
  done
  "$bins/idlist" "$work/warm/data/t.db" 1000 > "$work/warm/ids"
  "$bins/idlist" "$work/cold/data/t.db" 1000 > "$work/cold/ids"
  "$bins/bare" 127.0.0.1:9101 2> /dev/null & sleep 0.5
  wrk_run "bare axum JSON endpoint" "http://127.0.0.1:9101/v1/products/$(head -1 "$work/warm/ids")"
  bare=$(cat "$work/last_rps")
  start "$work/warm" 9102; k=$(key "$work/warm")
  IDS="$work/warm/ids" wrk -t1 -c4 -d3s -s "$here/random_get.lua" -H "Authorization: Bearer $k" http://127.0.0.1:9102 > /dev/null
  IDS="$work/warm/ids" wrk_run "tombstone GET, cache warm" -s "$here/random_get.lua" -H "Authorization: Bearer $k" http://127.0.0.1:9102
  warm=$(cat "$work/last_rps")
  kill %2 2>/dev/null || true; sleep 0.5
  start "$work/cold" 9103; k=$(key "$work/cold")
  IDS="$work/cold/ids" wrk_run "tombstone GET, no cache (cold)" -s "$here/random_get.lua" -H "Authorization: Bearer $k" http://127.0.0.1:9103
  awk -v w="$warm" -v b="$bare" 'BEGIN {printf "cached GET / bare endpoint: %.0f%%\n", 100*w/b}'
  ;;
search)
  mkdir -p "$work/s"; config "$work/s" ""
  "$tomb" migrate --config "$work/s/tombstone.toml" > /dev/null
  "$bins/seed" "$work/s/data/t.db" bench 100000 0
  "$tomb" reindex --config "$work/s/tombstone.toml"
  start "$work/s" 9104; k=$(key "$work/s")
  wrk_run "list ?q=teapot&limit=50 (10k hits)" -H "Authorization: Bearer $k" "http://127.0.0.1:9104/v1/products?q=teapot&limit=50"
  wrk_run "list ?q=teapot+glass (1k hits)" -H "Authorization: Bearer $k" "http://127.0.0.1:9104/v1/products?q=%2Bteapot%20%2Bglass&limit=50"
  wrk_run "list ?limit=50 (no q)" -H "Authorization: Bearer $k" "http://127.0.0.1:9104/v1/products?limit=50"
  ;;
purge)
  mkdir -p "$work/p"
  # PURGE_RATE caps rows/s (default: no effective cap); EXPIRED rows are due.
  config "$work/p" "$(printf '[purge]\ninterval = "25s"\nbatch_size = %s\npause = "10ms"\nmax_rows_per_second = %s' "${PURGE_BATCH:-5000}" "${PURGE_RATE:-1000000}")"
  "$tomb" migrate --config "$work/p/tombstone.toml" > /dev/null
  "$bins/seed" "$work/p/data/t.db" bench 100000 "${EXPIRED:-1000000}"
  "$bins/idlist" "$work/p/data/t.db" 5000 > "$work/p/ids"
  start "$work/p" 9105; k=$(key "$work/p")
  started=$(date +%s)
  IDS="$work/p/ids" wrk_run "GET while idle" -s "$here/random_get.lua" -H "Authorization: Bearer $k" http://127.0.0.1:9105
  wrk_run "list while idle" -H "Authorization: Bearer $k" "http://127.0.0.1:9105/v1/products?limit=50"
  # The first pass starts 25 s after start.
  while [ $(( $(date +%s) - started )) -lt 26 ]; do sleep 0.2; done
  t0=$(date +%s.%N)
  IDS="$work/p/ids" wrk_run "GET during purge" -s "$here/random_get.lua" -H "Authorization: Bearer $k" http://127.0.0.1:9105
  wrk_run "list during purge" -H "Authorization: Bearer $k" "http://127.0.0.1:9105/v1/products?limit=50"
  until grep -q "purge pass finished" "$work/p/server.log"; do sleep 0.5; done
  t1=$(date +%s.%N)
  rows=$(curl -s http://127.0.0.1:9105/metrics | awk '/^tombstone_purge_rows_total\{collection="products"\}/ {print $2}')
  grep "purge pass finished" "$work/p/server.log" | tail -1
  awk -v r="$rows" -v a="$t0" -v b="$t1" 'BEGIN {printf "purged %d rows; the pass ended %.1f s after the measurement started\n", r, b-a}'
  ;;
esac
