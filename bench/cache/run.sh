#!/usr/bin/env bash
# The cross-replica stale window of the read cache (SPEC §12 "Reads after a delete"):
# two `tombstone serve` replicas A and B on one PostgreSQL database; for each of N records,
# B reads it until it is cached, A deletes it, and B is read in a tight loop from A's 204
# until the first 404. Reported: the window (204 on A → first 404 on B) p50/p99/max, and
# how many of B's reads that started after the 204 still answered 200 (stale reads).
#   bench/cache/run.sh                      memory caches (LISTEN/NOTIFY), release build
#   CACHE=redis bench/cache/run.sh          one shared Redis (a throwaway scripts/redis)
#   TOMBSTONE_BIN=target/debug/tombstone N=300 bench/cache/run.sh
# PostgreSQL: the database STORAGE_URL=postgres://… names (use a throwaway one), or a
# throwaway cluster (scripts/postgres). Prints figures; nothing is asserted.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
n=${N:-500}
cache=${CACHE:-memory}
work="$(mktemp -d)"
pg_dir=""
redis_dir=""
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -z "$pg_dir" ] || "$root/scripts/postgres" stop "$pg_dir" || true
  [ -z "$redis_dir" ] || "$root/scripts/redis" stop "$redis_dir" || true
  rm -rf "$work"
}
trap cleanup EXIT
if [ -z "${TOMBSTONE_BIN:-}" ]; then
  (cd "$root" && cargo build --release --quiet --bin tombstone)
fi
tomb="${TOMBSTONE_BIN:-$root/target/release/tombstone}"
storage=${STORAGE_URL:-}
if [ -z "$storage" ]; then
  pg_dir="$(mktemp -d)"
  storage=$("$root/scripts/postgres" start "$pg_dir")
fi
case "$cache" in
  memory) cache_url=memory ;;
  redis) redis_dir="$(mktemp -d)"; cache_url=$("$root/scripts/redis" start "$redis_dir") ;;
  *) echo "CACHE must be memory or redis" >&2; exit 2 ;;
esac
for r in a b; do
  cat >"$work/$r.toml" <<TOML
[storage]
url = "$storage"
[cache]
url = "$cache_url"
[search]
path = "search-$r"
[collections.products.fields]
name = { type = "string", required = true }
TOML
done
tenant="bench$RANDOM"
key=$("$tomb" keys create --config "$work/a.toml" --tenant "$tenant" --scopes admin --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
ports=()
for r in a b; do
  port=$((20000 + RANDOM % 30000))
  (cd "$work" && TOMBSTONE_LOG=warn exec "$tomb" serve --config "$work/$r.toml" --listen "127.0.0.1:$port" 2>"$work/$r.log") &
  pids+=($!)
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/$r.log" >&2; exit 1; }
    sleep 0.1
  done
  ports+=("$port")
done
echo "cache: $cache_url; binary: $tomb; N=$n" >&2
python3 "$here/stale_window.py" "http://127.0.0.1:${ports[0]}" "http://127.0.0.1:${ports[1]}" "$key" "$n"
