#!/usr/bin/env bash
# History reads (SPEC §14) through HTTP, on either store: GET by id and a list page of 50
# (after a random cursor), each plain and `as_of` a random instant, over R records with V
# versions each (R=100000 V=10: 1,000,000 version rows, as the issue asks).
#   bench/history/http.sh                  SQLite
#   STORE=postgres bench/history/http.sh   a throwaway PostgreSQL cluster (scripts/postgres
#                                          start --durable; stopped and removed on every exit)
#   R=… V=…        records and versions per record (a create and V-1 updates)
#   SECS=…         seconds per wrk run (default 10); ROUNDS=… runs of each (default 3),
#                  plain and as-of alternating, the order swapped every round
#   CONNS=…        wrk connections (default 8)
#   HOLD=…         seconds to wait after seeding, servers up, before measuring (to attach a
#                  profiler: the script prints ports, pid, key and the files pick.lua reads)
#   TOMBSTONE_BIN=…  a release binary already built (else: cargo build --release)
# The rows are written with SQL after `tombstone migrate`, never through the API: one record
# is created through the API first and its stored representation is the template of every
# version's body (its id, sku, name, n, version and times replaced), so the bodies are what
# the server writes. The versions are inserted in time order, round by round, each round
# changing every record once in a shuffled order (PostgreSQL's heap and SQLite's pages fill
# as a live table's would). The instants T are drawn from the span of rounds 2..V, so every
# record exists at T and the version in force varies. Needs wrk and sqlite3. Prints
# figures; nothing is asserted.
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
R=${R:-100000}; V=${V:-10}; secs=${SECS:-10}; rounds=${ROUNDS:-3}

if [ -z "${TOMBSTONE_BIN:-}" ]; then (cd "$root" && cargo build --release --quiet --bin tombstone); fi
tomb="${TOMBSTONE_BIN:-$root/target/release/tombstone}"

storage='url = "sqlite://data/t.db"'
pg_url=""
if [ "$store" = postgres ]; then
  pg_dir=$(mktemp -d)  # not under $work: the cluster's user must reach it
  "$root/scripts/postgres" start --durable "$pg_dir" > "$work/pg.url"
  pg_url=$(cat "$work/pg.url")
  storage=$'url = "'"$pg_url"$'"\npool_size = 32'
elif [ "$store" != sqlite ]; then echo "STORE is sqlite or postgres"; exit 2; fi
cat > "$work/tombstone.toml" <<TOML
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
n    = { type = "integer" }
TOML
# A second server on the same database without a memory cache: a plain GET by id is then a
# read of the store, as an as-of GET always is.
mkdir -p "$work/nocache"
sed 's|"sqlite://data/t.db"|"sqlite://../data/t.db"|; s|"data/search"|"search"|' "$work/tombstone.toml" > "$work/nocache/tombstone.toml"
printf '[cache]\ncapacity = 0\n' >> "$work/nocache/tombstone.toml"
sql() { # one statement or script on the store, rows as text
  if [ "$store" = postgres ]; then psql "$pg_url" -qAt -v ON_ERROR_STOP=1; else sqlite3 "$work/data/t.db"; fi
}

port=9231
start() { # [config dir] [port]
  local dir=${1:-$work} p=${2:-$port}
  "$tomb" serve --config "$dir/tombstone.toml" --listen "127.0.0.1:$p" 2> "$dir/server.log" &
  for _ in $(seq 1 100); do grep -q "listening on" "$dir/server.log" 2>/dev/null && return; sleep 0.1; done
  echo "server did not start"; cat "$dir/server.log"; exit 1
}
stop() { kill %1; wait %1 2>/dev/null || true; }

"$tomb" migrate --config "$work/tombstone.toml" > /dev/null
start
key=$("$tomb" keys create --config "$work/tombstone.toml" --tenant bench --scopes admin --json \
  | sed 's/.*"secret":"\([^"]*\)".*/\1/')
tid=$(curl -sf -H "Authorization: Bearer $key" -H 'content-type: application/json' \
  -d '{"sku":"SKU-TPL","name":"NAME-TPL","n":0}' "http://127.0.0.1:$port/v1/products" \
  | sed 's/.*"id":"\([^"]*\)".*/\1/')
stop
body=$(echo "select body from versions where record_id = '$tid';" | sql)
actor=$(echo "select actor from versions where record_id = '$tid';" | sql)
created=$(echo "$body" | sed 's/.*"created_at":"\([^"]*\)".*/\1/')
# The template: every value the rows differ in replaced by a token.
tpl=$(echo "$body" | sed -e "s/\"$tid\"/\"@ID@\"/" -e 's/"SKU-TPL"/"@SKU@"/' -e 's/"NAME-TPL"/"@NAME@"/' \
  -e 's/"n":0/"n":@N@/' -e 's/"version":1/"version":@V@/' \
  -e "s/\"created_at\":\"$created\"/\"created_at\":\"@C@\"/" -e "s/\"updated_at\":\"$created\"/\"updated_at\":\"@U@\"/")
for t in @ID@ @SKU@ @NAME@ @N@ @V@ @C@ @U@; do
  case "$tpl" in *"$t"*) ;; *) echo "the template lacks $t: $body"; exit 1 ;; esac
done
echo "template ($(echo -n "$body" | wc -c) bytes): $tpl"

# Version j (1..V) of record i was written at base + ((j-1)·R + p(i))·step µs, p a
# permutation of 0..R-1 (i·7919 mod R; 7919 is prime and R a product of 2s and 5s).
step=1000
now=$(($(date +%s) * 1000000))
base=$((now - R * V * step - 3600 * 1000000))
from=$((base + R * step)); to=$((base + R * V * step - 1))
echo "seeding $R records × $V versions on $store, $(date -u '+%H:%M:%S')"
if [ "$store" = postgres ]; then
  sql <<SQL
create function pg_temp.ts(us bigint) returns text language sql immutable as
  \$\$ select to_char(to_timestamp(us / 1000000) at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS') || '.' || lpad((us % 1000000)::text, 6, '0') || 'Z' \$\$;
delete from versions where record_id = '$tid';
delete from rec_products where id = '$tid';
insert into versions (tenant, collection, record_id, valid_from, version, action, actor, deletion_id, body)
select 'bench', 'products', id, t, j, case when j = 1 then 'create' else 'update' end, '$actor', null,
       replace(replace(replace(replace(replace(replace(replace('$tpl', '@ID@', id), '@SKU@', 'SKU-' || id),
               '@NAME@', 'Product ' || id), '@N@', (j - 1)::text), '@V@', j::text), '@C@', pg_temp.ts(c)), '@U@', pg_temp.ts(t))
from (select lpad(i::text, 9, '0') as id, j, $base + ((j - 1)::bigint * $R + (i::bigint * 7919) % $R) * $step as t,
             $base + ((i::bigint * 7919) % $R) * $step as c
      from generate_series(0, $R - 1) i, generate_series(1, $V) j) s
order by t;
insert into rec_products (tenant, id, version, created_at, updated_at, f_sku, f_name, f_n)
select 'bench', lpad(i::text, 9, '0'), $V, $base + ((i::bigint * 7919) % $R) * $step,
       $base + (($V - 1)::bigint * $R + (i::bigint * 7919) % $R) * $step,
       'SKU-' || lpad(i::text, 9, '0'), 'Product ' || lpad(i::text, 9, '0'), $V - 1
from generate_series(0, $R - 1) i;
vacuum (analyze) versions;
vacuum (analyze) rec_products;
checkpoint;
select 'versions ' || count(*) || ', ' || pg_size_pretty(pg_total_relation_size('versions')) from versions;
SQL
else
  sql <<SQL
pragma journal_mode = wal;
delete from versions where record_id = '$tid';
delete from rec_products where id = '$tid';
begin;
with recursive n(i) as (select 0 union all select i + 1 from n where i < $R - 1),
     k(j) as (select 1 union all select j + 1 from k where j < $V),
     s(id, j, t, c) as (select printf('%09d', i), j, $base + ((j - 1) * $R + (i * 7919) % $R) * $step,
                               $base + ((i * 7919) % $R) * $step from n, k)
insert into versions (tenant, collection, record_id, valid_from, version, action, actor, deletion_id, body)
select 'bench', 'products', id, t, j, case when j = 1 then 'create' else 'update' end, '$actor', null,
       replace(replace(replace(replace(replace(replace(replace('$tpl', '@ID@', id), '@SKU@', 'SKU-' || id),
               '@NAME@', 'Product ' || id), '@N@', j - 1), '@V@', j),
               '@C@', strftime('%Y-%m-%dT%H:%M:%S', c / 1000000, 'unixepoch') || printf('.%06dZ', c % 1000000)),
               '@U@', strftime('%Y-%m-%dT%H:%M:%S', t / 1000000, 'unixepoch') || printf('.%06dZ', t % 1000000))
from s order by t;
with recursive n(i) as (select 0 union all select i + 1 from n where i < $R - 1)
insert into rec_products (tenant, id, version, created_at, updated_at, f_sku, f_name, f_n)
select 'bench', printf('%09d', i), $V, $base + ((i * 7919) % $R) * $step,
       $base + (($V - 1) * $R + (i * 7919) % $R) * $step, 'SKU-' || printf('%09d', i), 'Product ' || printf('%09d', i), $V - 1
from n;
commit;
analyze;
pragma wal_checkpoint(truncate);
select 'versions ' || count(*) || ', ' || (select sum(pgsize) from dbstat where name like '%versions%') || ' bytes' from versions;
SQL
fi | tail -1
sync

# Ids to read and cursors to list after, drawn at random.
python3 - "$R" "$work" <<'PY'
import base64, json, random, sys
r, work = int(sys.argv[1]), sys.argv[2]
random.seed(7)
with open(f"{work}/ids", "w") as f:
    for i in range(r):
        f.write("%09d\n" % i)
with open(f"{work}/cursors", "w") as f:
    for _ in range(2000):
        i = "%09d" % random.randrange(max(r - 60, 1))
        c = json.dumps({"s": "id", "v": i, "i": i}, separators=(",", ":")).encode()
        f.write(base64.urlsafe_b64encode(c).decode().rstrip("=") + "\n")
PY

start
start "$work/nocache" $((port + 1))
h="Authorization: Bearer $key"
# Check the seeded history answers as the server's own would: a record's versions, and the
# version in force at an instant (record 0's version k was written in round k, its n k-1).
k=$((V < 4 ? V : 4))
tk=$((base + (k - 1) * R * step))
nk=$(curl -sf -H "$h" "http://127.0.0.1:$port/v1/products/000000000?as_of=$(date -u -d "@$((tk / 1000000))" +%Y-%m-%dT%H:%M:%S).$(printf '%06d' $((tk % 1000000)))Z" \
  | sed 's/.*"n":\([0-9]*\).*/\1/')
[ "$nk" = $((k - 1)) ] || { echo "as_of read the wrong version: n=$nk, not $((k - 1))"; exit 1; }
echo "record 000000000: $(curl -sf -H "$h" "http://127.0.0.1:$port/v1/products/000000000/versions?limit=100" | grep -o '"action":' | wc -l) versions listed; as_of its version $k: n=$nk"

export IDS="$work/ids" CURSORS="$work/cursors" FROM=$from TO=$to
run() { # mode, port → "req/s p50 p99" (ms)
  local out; curl -s -o /dev/null -H "$h" "http://127.0.0.1:$2/v1/products?limit=1"; sleep 1
  out=$(MODE=$1 wrk -t2 -c"${CONNS:-8}" -d${secs}s --latency -s "$here/pick.lua" -H "$h" "http://127.0.0.1:$2")
  echo "$out" | grep -q "Non-2xx" && { echo "$1: errors"; echo "$out"; exit 1; }
  echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}') $(echo "$out" | awk '$1=="50%" {print $2}') $(echo "$out" | awk '$1=="99%" {print $2}')"
}
for p in $port $((port + 1)); do  # the whole cache filled (ids in order), then a few pages
  MODE=list wrk -t1 -c2 -d2s -s "$here/pick.lua" -H "$h" "http://127.0.0.1:$p" > /dev/null
done
python3 - "$R" "$port" "$key" <<'PY'
import http.client, sys
r, port, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection("127.0.0.1", port)
for i in range(r):
    conn.request("GET", "/v1/products/%09d" % i, headers={"Authorization": "Bearer " + key})
    conn.getresponse().read()
PY

if [ -n "${HOLD:-}" ]; then  # time to attach a profiler: the servers, a key and the lists
  echo "HOLD: cached server 127.0.0.1:$port (pid $(jobs -p | head -1)), uncached $((port + 1)); key $key; IDS=$IDS CURSORS=$CURSORS FROM=$FROM TO=$TO"
  sleep "$HOLD"
fi
echo "store $store, $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg), wrk -c${CONNS:-8} ${secs}s × $rounds"
# GET by id against the cached server and against the one without a cache (its as-of GET
# reads the store either way), then the list page (never cached).
for pair in "get get_as_of cached" "get get_as_of uncached" "list list_as_of cached"; do
  read -r plain asof server <<< "$pair"
  p=$port; [ "$server" = uncached ] && p=$((port + 1))
  echo "-- $plain / $asof, server $server"
  declare -A rps=() p50=() p99=()
  for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="$plain $asof"; else order="$asof $plain"; fi
    for m in $order; do
      read -r q a b <<< "$(run "$m" "$p")"
      printf "  %-11s round %d: %9s req/s   p50 %8s   p99 %8s\n" "$m" "$r" "$q" "$a" "$b"
      rps[$m]+="$q "; p50[$m]+="$(echo "$a" | to_ms) "; p99[$m]+="$(echo "$b" | to_ms) "
    done
  done
  med() { echo "$1" | tr ' ' '\n' | grep . | median; }
  qp=$(med "${rps[$plain]}"); qa=$(med "${rps[$asof]}")
  lp=$(med "${p50[$plain]}"); la=$(med "${p50[$asof]}"); tp=$(med "${p99[$plain]}"); ta=$(med "${p99[$asof]}")
  awk -v m="$asof" -v qp="$qp" -v qa="$qa" -v lp="$lp" -v la="$la" -v tp="$tp" -v ta="$ta" 'BEGIN {
    printf "=> %s against plain (medians): %.0f / %.0f req/s (plain %.2f× as fast); p50 %.2f / %.2f ms (%.2f×); p99 %.2f / %.2f ms (%.2f×)\n",
      m, qa, qp, qp / qa, la, lp, la / lp, ta, tp, ta / tp }'
done
