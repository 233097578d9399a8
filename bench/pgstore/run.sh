#!/usr/bin/env bash
# Soft delete through the PostgreSQL store beside pgbench's built-in read-write test
# (TPC-B-like), on the same cluster in the same run, at 1, 8 and 32 clients.
#
# Usage: bench/pgstore/run.sh <admin postgres url> [seconds per run]
# The URL's user must be able to create databases; two are created and dropped.
set -euo pipefail
admin=${1:?usage: run.sh <admin postgres url> [seconds]}
seconds=${2:-5}
here=$(cd "$(dirname "$0")" && pwd)
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
export PATH="$pgbin:$PATH"
suffix=$$
store_db=bench_store_$suffix
pgbench_db=bench_pgbench_$suffix
url_of() { # the admin URL with another database
  local base=${admin%%\?*} query=""
  [[ $admin == *\?* ]] && query="?${admin#*\?}"
  echo "${base%/*}/$1$query"
}
cleanup() {
  psql "$admin" -qc "drop database if exists $store_db with (force)" || true
  psql "$admin" -qc "drop database if exists $pgbench_db with (force)" || true
}
trap cleanup EXIT
psql "$admin" -qc "create database $store_db"
psql "$admin" -qc "create database $pgbench_db"
psql "$admin" -Atc "select 'server: ' || version() || ', fsync=' || current_setting('fsync') || ', synchronous_commit=' || current_setting('synchronous_commit')"

# PROFILE=dev reuses a dev build's crates (dependencies at opt-level 1): no second target
# directory where disk is short. The default is a release build.
profile=${PROFILE:-release}
(cd "$here" && cargo build --profile "$profile" --quiet)
dir=$profile; [[ $profile == dev ]] && dir=debug
"${CARGO_TARGET_DIR:-$here/target}/$dir/tombstone-pgstore-bench" "$(url_of "$store_db")" "$seconds"

pgbench -q -i -s 10 "$(url_of "$pgbench_db")" >/dev/null 2>&1
for c in 1 8 32; do
  tps=$(pgbench -n -M prepared -c "$c" -j 2 -T "$seconds" "$(url_of "$pgbench_db")" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  lat=$(pgbench -n -M prepared -c "$c" -j 2 -T 1 "$(url_of "$pgbench_db")" 2>/dev/null | sed -n 's/^latency average = \(.*\)$/\1/p')
  echo "pgbench tpcb-like clients=$c tps=$tps (latency average $lat)"
done
