#!/usr/bin/env bash
# Archive (SPEC §17) and the list index plan: lists of 50 and their counts over 100,000
# current records in a table of their own and beside 1,000,000 archived and 1,000,000 soft-deleted
# rows in the same table, their ids interleaved with the current ones (each current record
# has 10 archived and 10 deleted neighbours in id order), so a plan that is not flat would
# read 21 rows per listed one.
#   bench/archive/run.sh           both runs on SQLite
#   STORE=postgres                 both runs on a throwaway PostgreSQL cluster (scripts/postgres
#                                  start --durable; stopped and removed on every exit)
#   ARCHIVED=… DELETED=… ACTIVE=…  other sizes (ARCHIVED and DELETED: multiples of ACTIVE)
#   SECS=…                         seconds per wrk run (default 10)
#   CONNS=…                        wrk connections (default 8)
#   ROUNDS=…                       runs of each request on each table, alternating (default 3);
#                                  the ratio printed is of the median p99s
#   VIEWS=0                        only the default list, its count and the cursor page (the
#                                  benchmark's bar), not include=archived and the archived views
#   TOMBSTONE_BIN=…                a release binary already built (else: cargo build --release)
# Rows are seeded with SQL (sqlite3 or psql) after `tombstone migrate`, never through the
# API; PostgreSQL's table is then vacuumed and analysed, as autovacuum would after a bulk
# load. Each run prints the plans of the list and count queries first. Every wrk run starts
# on an idle server (requests still running from the previous run are waited out).
# Needs wrk and sqlite3 (apt-get install wrk sqlite3). Prints figures; nothing is asserted.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
. "$root/bench/lib.sh"
work="$(mktemp -d)"
store=${STORE:-sqlite}
pg_dir=""
cleanup() {
  kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true
  if [ -n "$pg_dir" ]; then "$root/scripts/postgres" stop "$pg_dir" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
secs=${SECS:-10}
active=${ACTIVE:-100000}; archived=${ARCHIVED:-1000000}; deleted=${DELETED:-1000000}
per_a=$((archived / active)); per_d=$((deleted / active))

if [ -z "${TOMBSTONE_BIN:-}" ]; then (cd "$root" && cargo build --release --quiet --bin tombstone); fi
tomb="${TOMBSTONE_BIN:-$root/target/release/tombstone}"

pg_url=""
case "$store" in
sqlite) ;;
postgres)
  pg_dir=$(mktemp -d)  # not under $work: the cluster's user must reach it
  "$root/scripts/postgres" start --durable "$pg_dir" > "$work/pg.url"
  pg_url=$(cat "$work/pg.url")
  ;;
*) echo "STORE is sqlite or postgres"; exit 2 ;;
esac

config() { # $1 = dir, $2 = database name (PostgreSQL)
  local storage='url = "sqlite://data/t.db"'
  if [ "$store" = postgres ]; then storage=$'url = "'"${pg_url%/postgres}/$2"$'"\npool_size = 32'; fi
  cat > "$1/tombstone.toml" <<TOML
[storage]
$storage
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

# The queries the store runs for a list of 50 and its count ($1: the scope's condition).
list_sql() { echo "select * from rec_products t where t.tenant = 'bench' and $1 order by t.id limit 51"; }
count_sql() { echo "select count(*) from rec_products t where t.tenant = 'bench' and $1"; }
current="t.deleted_at is null and t.archived_at is null"
only_archived="t.deleted_at is null and t.archived_at is not null"
with_archived="select (select count(*) from rec_products t where t.tenant = 'bench' and $current) + (select count(*) from rec_products t where t.tenant = 'bench' and $only_archived)"

seed_sqlite() { # $1 = dir, $2 = archived per current record, $3 = deleted per current record
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

seed_postgres() { # $1 = database URL, $2 = archived per current record, $3 = deleted per current record
  local now; now=$(($(date +%s) * 1000000))
  psql "$1" -qAt -v ON_ERROR_STOP=1 <<SQL
insert into rec_products (tenant, id, version, created_at, updated_at, deleted_at, deleted_by, deletion_id, purge_at,
                          archived_at, archived_by, archive_reason, f_sku, f_name)
select 'bench', lpad(i::text, 9, '0') || '-' || lpad(j::text, 3, '0'), 1, $now, $now,
       case when j > $2 then $now end, case when j > $2 then 'key_seed' end,
       case when j > $2 then 'del_seed' end, case when j > $2 then $now + 30 * 86400000000 end,
       case when j between 1 and $2 then $now end, case when j between 1 and $2 then 'system' end,
       case when j between 1 and $2 then 'archive_after 90d' end,
       'SKU-' || lpad(i::text, 9, '0') || '-' || lpad(j::text, 3, '0'), 'Product ' || i
from generate_series(0, $active - 1) i, generate_series(0, $2 + $3) j
order by 2;
vacuum (analyze) rec_products;
select 'current ' || count(*) filter (where deleted_at is null and archived_at is null)
       || ', archived ' || count(*) filter (where archived_at is not null)
       || ', deleted ' || count(*) filter (where deleted_at is not null) from rec_products;
SQL
}

plans() { # $1 = dir, $2 = database URL
  local q
  for q in "$(list_sql "$current")" "$(list_sql "$only_archived")" "$(count_sql "$current")" \
           "$(count_sql "$only_archived")" "$with_archived"; do
    echo "   $q"
    if [ "$store" = postgres ]; then
      psql "$2" -qAt -c "explain (analyze, buffers, costs off, timing off) $q" | sed 's/^/      /'
    else
      sqlite3 "$1/data/t.db" "explain query plan $q" | sed 's/^/      /'
    fi
  done
}

start() { # $1 = dir, $2 = port
  "$tomb" serve --config "$1/tombstone.toml" --listen "127.0.0.1:$2" 2> "$1/server.log" &
  for _ in $(seq 1 100); do grep -q "listening on" "$1/server.log" 2>/dev/null && return; sleep 0.1; done
  echo "server did not start"; cat "$1/server.log"; exit 1
}

key() { "$tomb" keys create --config "$1/tombstone.toml" --tenant bench --scopes admin --json | sed 's/.*"secret":"\([^"]*\)".*/\1/'; }

# One request alone, after the previous wrk run's last requests: wrk stops on time and
# leaves its in-flight requests running on the server, where they would delay the next run.
settle() { # url, key
  curl -s -o /dev/null -H "Authorization: Bearer $2" "$1"; sleep 1
}

wrk_run() { # label, url, key
  local out; settle "$2" "$3"
  out=$(wrk -t2 -c"${CONNS:-8}" -d${secs}s --latency -H "Authorization: Bearer $3" "$2")
  printf "%-58s %9s req/s   p50 %8s   p99 %8s\n" "$1" "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
    "$(echo "$out" | awk '$1=="50%" {print $2}')" "$(echo "$out" | awk '$1=="99%" {print $2}')"
}

# A cursor in the middle of the table, as a client paging on would send it.
cursor() { # id
  printf '{"s":"id","v":"%s","i":"%s"}' "$1" "$1" | base64 -w0 | tr '+/' '-_' | tr -d '='
}
mid=$(printf '%09d-%03d' $((active / 2)) 0)

echo "store $store, $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
# Both tables are seeded, vacuumed and checkpointed before anything is measured, and both
# servers run side by side; each request is then measured ROUNDS times on each, the order
# swapped every round, so that the two sides share the machine's state (a checkpoint still
# writing the bulk load, a busy neighbour) instead of one side having it to itself.
rounds=${ROUNDS:-3}
declare -a dirs dbs ports keys labels
n=0
for run in "none:0:0" "archived+deleted:$per_a:$per_d"; do
  IFS=: read -r label a d <<< "$run"
  n=$((n + 1)); dir="$work/$n"; mkdir -p "$dir"; config "$dir" "bench$n"
  db=""
  if [ "$store" = postgres ]; then
    psql "$pg_url" -qc "create database bench$n"
    db="${pg_url%/postgres}/bench$n"
  fi
  "$tomb" migrate --config "$dir/tombstone.toml" > /dev/null
  if [ "$store" = postgres ]; then summary=$(seed_postgres "$db" "$a" "$d" | tail -1)
  else summary=$(seed_sqlite "$dir" "$a" "$d" | tail -1); fi
  echo "== $label: $summary"
  plans "$dir" "$db"
  dirs[$n]=$dir; dbs[$n]=$db; labels[$n]=$label
done
# The bulk loads' pages on disk before the first request, not during it.
if [ "$store" = postgres ]; then psql "$pg_url" -qc "checkpoint"
else for i in 1 2; do sqlite3 "${dirs[$i]}/data/t.db" "pragma wal_checkpoint(truncate)" > /dev/null; done; fi
sync
for i in 1 2; do
  ports[$i]=$((9200 + i)); start "${dirs[$i]}" "${ports[$i]}"; keys[$i]=$(key "${dirs[$i]}")
  wrk -t1 -c2 -d2s -H "Authorization: Bearer ${keys[$i]}" "http://127.0.0.1:${ports[$i]}/v1/products?limit=50" > /dev/null  # warm-up
done


compare() { # label, query string after ?limit=50
  local r i order p99 ratios="" none=() beside=()
  for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="1 2"; else order="2 1"; fi
    for i in $order; do
      line=$(wrk_run "$1 [${labels[$i]}, round $r]" "http://127.0.0.1:${ports[$i]}/v1/products?limit=50$2" "${keys[$i]}")
      echo "$line"
      p99=$(echo "$line" | awk '{print $NF}' | to_ms)
      if [ "$i" = 1 ]; then none+=("$p99"); else beside+=("$p99"); fi
    done
  done
  for r in $(seq 0 $((rounds - 1))); do ratios+="$(awk -v a="${none[$r]}" -v b="${beside[$r]}" 'BEGIN { printf "%.2f ", b / a }')"; done
  local mn mb; mn=$(printf '%s\n' "${none[@]}" | median); mb=$(printf '%s\n' "${beside[@]}" | median)
  printf "   => %s: p99 ratio by round %s; median p99 %s ms none, %s ms beside: %s\n" "$1" "$ratios" "$mn" "$mb" \
    "$(awk -v a="$mn" -v b="$mb" 'BEGIN { printf "%.2f", b / a }')"
}
alone() { # label, query string: the archived views, which only the seeded table has
  local r
  for r in $(seq 1 "$rounds"); do
    wrk_run "$1 [${labels[2]}, round $r]" "http://127.0.0.1:${ports[2]}/v1/products?limit=50$2" "${keys[2]}"
  done
}
compare "GET /v1/products?limit=50" ""
compare "…&count=true" "&count=true"
compare "…&cursor=<middle>" "&cursor=$(cursor "$mid")"
[ "${VIEWS:-1}" = 0 ] && exit 0
compare "…&include=archived&count=true" "&include=archived&count=true"
alone "…&filter[archived]=true" "&filter%5Barchived%5D=true"
alone "…&filter[archived]=true&cursor=<middle>" "&filter%5Barchived%5D=true&cursor=$(cursor "$mid")"
alone "…&filter[archived]=true&count=true" "&filter%5Barchived%5D=true&count=true"
