#!/usr/bin/env bash
# Archive (SPEC §17) and the list index plan: GET /v1/products?limit=50 (and with
# count=true) over 100,000 current records, first alone, then beside 1,000,000 archived and
# 1,000,000 soft-deleted rows in the same table, their ids interleaved with the current
# ones (each current record has 10 archived and 10 deleted neighbours in id order), so a
# plan that is not flat would read 21 rows per listed one.
#   bench/archive/run.sh           both runs on SQLite
#   ARCHIVED=… DELETED=… ACTIVE=…  other sizes (ARCHIVED and DELETED: multiples of ACTIVE)
#   SECS=…                         seconds per wrk run (default 10)
# Rows are seeded with SQL (sqlite3) after `tombstone migrate`, never through the API.
# Needs wrk and sqlite3 (apt-get install wrk sqlite3). Prints figures; nothing is asserted.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
secs=${SECS:-10}
active=${ACTIVE:-100000}; archived=${ARCHIVED:-1000000}; deleted=${DELETED:-1000000}
per_a=$((archived / active)); per_d=$((deleted / active))

(cd "$root" && cargo build --release --quiet --bin tombstone)
tomb="${TOMBSTONE_BIN:-$root/target/release/tombstone}"

config() { # $1 = dir
  cat > "$1/tombstone.toml" <<TOML
[storage]
url = "sqlite://data/t.db"
[search]
path = "data/search"
[retention]
default = "30d"
[collections.products]
unique = [["sku"]]
[collections.products.fields]
sku  = { type = "string", required = true }
name = { type = "string", required = true }
TOML
}

seed() { # $1 = dir, $2 = archived per current record, $3 = deleted per current record
  local now; now=$(($(date +%s) * 1000000))
  sqlite3 "$1/data/t.db" <<SQL
pragma journal_mode = wal;
pragma synchronous = off;
begin;
with recursive n(i) as (select 0 union all select i + 1 from n where i < $active - 1),
     k(j) as (select 0 union all select j + 1 from k where j < $2 + $3)
insert into rec_products (tenant, id, version, created_at, updated_at, deleted_at, deleted_by, deletion_id, purge_at,
                          archived_at, archived_by, archive_reason, f_sku, f_name)
select 'bench', printf('%09d-%03d', i, j), 1, $now, $now,
       case when j > $2 then $now end, case when j > $2 then 'key_seed' end,
       case when j > $2 then 'del_seed' end, case when j > $2 then $now + 30 * 86400000000 end,
       case when j between 1 and $2 then $now end, case when j between 1 and $2 then 'system' end,
       case when j between 1 and $2 then 'archive_after 90d' end,
       printf('SKU-%09d-%03d', i, j), 'Product ' || i
from n, k;
commit;
analyze;
select 'current ' || sum(deleted_at is null and archived_at is null) || ', archived ' || sum(archived_at is not null)
       || ', deleted ' || sum(deleted_at is not null) from rec_products;
SQL
}

start() { # $1 = dir, $2 = port
  "$tomb" serve --config "$1/tombstone.toml" --listen "127.0.0.1:$2" 2> "$1/server.log" &
  for _ in $(seq 1 100); do grep -q "listening on" "$1/server.log" 2>/dev/null && return; sleep 0.1; done
  echo "server did not start"; cat "$1/server.log"; exit 1
}

key() { "$tomb" keys create --config "$1/tombstone.toml" --tenant bench --scopes admin --json | sed 's/.*"secret":"\([^"]*\)".*/\1/'; }

wrk_run() { # label, url, key
  local out; out=$(wrk -t2 -c8 -d${secs}s --latency -H "Authorization: Bearer $3" "$2")
  printf "%-44s %9s req/s   p50 %8s   p99 %8s\n" "$1" "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
    "$(echo "$out" | awk '$1=="50%" {print $2}')" "$(echo "$out" | awk '$1=="99%" {print $2}')"
}

port=9201
for run in "none:0:0" "archived+deleted:$per_a:$per_d"; do
  IFS=: read -r label a d <<< "$run"
  dir="$work/$label"; mkdir -p "$dir"; config "$dir"
  "$tomb" migrate --config "$dir/tombstone.toml" > /dev/null
  echo "== $label: $(seed "$dir" "$a" "$d" | tail -1)"
  sqlite3 "$dir/data/t.db" "explain query plan select id from rec_products where tenant = 'bench' and deleted_at is null and archived_at is null order by id limit 51;" | sed 's/^/   plan: /'
  start "$dir" $port; k=$(key "$dir")
  wrk -t1 -c2 -d2s -H "Authorization: Bearer $k" "http://127.0.0.1:$port/v1/products?limit=50" > /dev/null  # warm-up
  wrk_run "GET /v1/products?limit=50" "http://127.0.0.1:$port/v1/products?limit=50" "$k"
  wrk_run "GET /v1/products?limit=50&count=true" "http://127.0.0.1:$port/v1/products?limit=50&count=true" "$k"
  wrk_run "GET /v1/products?limit=50&filter[archived]=true" "http://127.0.0.1:$port/v1/products?limit=50&filter%5Barchived%5D=true" "$k"
  kill %1 2>/dev/null || true; wait 2>/dev/null || true
  rm -rf "$dir"; port=$((port + 1))
done
