#!/usr/bin/env bash
# Commit -> JetStream publish latency of the NATS relay (SPEC §12), on SQLite (or on the
# PostgreSQL database STORAGE_URL=postgres://… names: use a throwaway one):
# a throwaway nats-server (scripts/nats), one `tombstone serve` with events.nats, and
# N=1000 sequential creates, each timed from its 201 to its event at a NATS subscriber.
#   bench/nats/run.sh            release build (built first)
#   TOMBSTONE_BIN=target/debug/tombstone N=300 bench/nats/run.sh
# Prints figures; nothing is asserted.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
n=${N:-1000}
work="$(mktemp -d)"
nats_dir="$(mktemp -d)"
serve_pid=""
cleanup() {
  [ -z "$serve_pid" ] || kill "$serve_pid" 2>/dev/null || true
  "$root/scripts/nats" stop "$nats_dir" || true
  rm -rf "$work"
}
trap cleanup EXIT
if [ -z "${TOMBSTONE_BIN:-}" ]; then
  (cd "$root" && cargo build --release --quiet --bin tombstone)
fi
tomb="${TOMBSTONE_BIN:-$root/target/release/tombstone}"
url=$("$root/scripts/nats" start "$nats_dir")
cat >"$work/tombstone.toml" <<TOML
[storage]
url = "${STORAGE_URL:-sqlite://data/t.db}"
[search]
path = "data/search"
[events]
nats = "$url"
[collections.products.fields]
name = { type = "string", required = true }
TOML
tenant="bench$RANDOM"
key=$("$tomb" keys create --config "$work/tombstone.toml" --tenant "$tenant" --scopes admin --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
port=$((20000 + RANDOM % 30000))
TOMBSTONE_LOG=warn "$tomb" serve --config "$work/tombstone.toml" --listen "127.0.0.1:$port" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 1 300); do
  curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  sleep 0.1
done
python3 "$here/latency.py" "http://127.0.0.1:$port" "$key" "${url#nats://}" "$tenant" "$n"
