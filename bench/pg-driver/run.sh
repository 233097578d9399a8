#!/usr/bin/env bash
# Runs the PostgreSQL driver benchmark (see README.md) on a throwaway cluster that keeps
# PostgreSQL's default durability (`scripts/postgres start --durable`: fsync,
# synchronous_commit and full_page_writes on), and stops the cluster however it ends.
# With TOMBSTONE_BENCH_POSTGRES_URL set, that server is used instead and nothing is started.
# Usage: bench/pg-driver/run.sh [pg-driver-bench options, e.g. --clients 1,8,32 --seconds 10]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

cargo build --release --quiet --manifest-path "$here/Cargo.toml"

dir=""
cleanup() {
  if [ -n "$dir" ]; then
    "$root/scripts/postgres" stop "$dir" || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pgbench_args=()
if [ -n "${TOMBSTONE_BENCH_POSTGRES_URL:-}" ]; then
  url=$TOMBSTONE_BENCH_POSTGRES_URL
else
  dir=$(mktemp -d)
  url=$("$root/scripts/postgres" start --durable "$dir")
  # The pgbench of the server that runs, not just any on PATH.
  pgbench_args=(--pgbench "$(cat "$dir/bindir")/pgbench")
fi
"$here/target/release/tombstone-pg-driver-bench" --url "$url" "${pgbench_args[@]}" "$@"
