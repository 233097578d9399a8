#!/usr/bin/env bash
# Tombstone HTTP benchmarks (wrk on loopback; server and load share the machine's cores).
#   bench/http/run.sh get      cached GET vs cold GET vs a bare axum JSON endpoint
#   bench/http/run.sh search   list with q= over 100,000 records
#   bench/http/run.sh purge    purge 1,000,000 expired rows beside 100,000 live ones under an open-loop
#                              read load (RATE reads/s for SECS s; PURGE_RATE=rows/s cap,
#                              PURGE_BATCH=rows per batch, PURGE_PAUSE=pause between batches,
#                              EXPIRED=rows due, READS_ONLY=1: no creates in the load); first the
#                              raw-SQL floor of the same writes and `tombstone purge` alone;
#                              ISOLATE=1: just before the pass, the server's background threads
#                              (writer, checkpointer, indexer) are pinned to CPU 1 and every other
#                              thread, the load generator's too, to CPU 0 (an experiment: can
#                              a dedicated core hide the pass from reads?)
#   bench/http/run.sh interference   the same read load alone and beside an idle-class spin loop
#   bench/http/run.sh stores   SQLite and PostgreSQL in one run, N=300000 records each: GET by id
#                              (cache warm, no cache) beside the bare endpoint, then DELETE (soft:
#                              row, audit entry, outbox event) at 1, 8 and 32 connections, and on
#                              PostgreSQL pgbench's read-write test at the same client counts on the
#                              same durable cluster; STORES="sqlite" or "postgres" runs one
#   bench/http/run.sh replicas a mixed load (9 GETs : 1 DELETE, soft) on 1, 2 and 3 `serve` replicas
#                              sharing one durable PostgreSQL (memory caches kept coherent by
#                              NOTIFY), N=300000 records, CONNS=30 connections in all split evenly
#                              over the replicas (one wrk each): req/s, p50/p99, and the CPU time
#                              per request of the replicas and of PostgreSQL (utime + stime from
#                              /proc), which is what says how it would scale on more cores, and
#                              each replica's writes per commit; CACHE=none (or redis://…) sets cache.url
#   bench/http/run.sh cost     what a request costs the server in CPU time (and instructions where the
#                              machine has hardware counters): perf stat on the server process while
#                              wrk runs, which a shared machine's load moves far less than req/s: GET warm and DELETE at 32
#                              connections on SQLite, N=100000 records, for each build in
#                              BINS="label=path …" (default: this tree's release build)
#   bench/http/run.sh tail     the write tail: DELETE (soft; WHAT=POST: create; WHAT=PATCH: a new name
#                              for random records) at 32 connections for
#                              SECS s on a fresh database of N=100000 records (SQLite), req/s, p50, p99
#                              and p99/p50, for each build in BINS="label=path …" (a label may repeat:
#                              runs alternate between builds)
#   bench/http/run.sh profile  where a request's CPU goes: perf record (cpu-clock samples, all of the
#                              server's threads) while wrk runs WHAT=DELETE (or GET) at 32 connections
#                              on SQLite, N=100000 records; prints the top symbols and the share of
#                              each thread (writer, indexer, runtime workers)
#   bench/http/run.sh events   latency from a DELETE's 204 to its event on an open SSE stream and at a
#                              webhook receiver, N=1000 sequential deletes (p50/p99)
#   bench/http/run.sh suite    the harness of the performance goals in one command: seeds N=100000 records
#                              (SQLite), starts the server (cache warm) and a second one without a cache,
#                              and runs each scenario RUNS=3 times (SECS s each, WSECS=4 s for writes):
#                              the bare axum endpoint, GET by id (uniform and Zipf ids over all N, cache
#                              warm; uniform, no cache), a list page, a q= search page (10,000 hits),
#                              POST and DELETE (soft, search field indexed) at 32 connections; prints
#                              each run, the medians, and the ratios to the bare endpoint measured in
#                              the same run (and search / list). Where the machine has 4 or more cores
#                              wrk is pinned to the last one and the servers to the others (taskset);
#                              on 2 cores they share both, and the harness says so.
# Needs wrk (apt-get install wrk). Prints figures; nothing is asserted.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
threads=2; conns=32; secs=${SECS:-10}

[ -n "${TOMBSTONE_BIN:-}" ] || (cd "$root" && cargo build --release --quiet --bin tombstone)  # TOMBSTONE_BIN given: no build
(cd "$here" && cargo build --release --quiet)
tomb="${TOMBSTONE_BIN:-$root/target/release/tombstone}"  # TOMBSTONE_BIN: measure another build
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
  : > "$1/server.log"  # a restart must not find the last start's line
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
  wrk_run "  the same, a new q each time" -s "$here/search_distinct.lua" -H "Authorization: Bearer $k" "http://127.0.0.1:9104"
  wrk_run "list ?q=teapot+glass (1k hits)" -H "Authorization: Bearer $k" "http://127.0.0.1:9104/v1/products?q=%2Bteapot%20%2Bglass&limit=50"
  wrk_run "list ?limit=50 (no q)" -H "Authorization: Bearer $k" "http://127.0.0.1:9104/v1/products?limit=50"
  ;;
purge)
  mkdir -p "$work/p"
  # PURGE_RATE caps rows/s (default: no effective cap), PURGE_BATCH rows per batch,
  # PURGE_PAUSE between batches; EXPIRED rows are due; RATE reads/s for SECS seconds.
  config "$work/p" "$(printf '[purge]\ninterval = "15s"\nbatch_size = %s\npause = "%s"\nmax_rows_per_second = %s' \
    "${PURGE_BATCH:-5000}" "${PURGE_PAUSE:-10ms}" "${PURGE_RATE:-1000000}")"
  "$tomb" migrate --config "$work/p/tombstone.toml" > /dev/null
  "$bins/seed" "$work/p/data/t.db" bench 100000 "${EXPIRED:-1000000}"
  "$bins/idlist" "$work/p/data/t.db" 5000 > "$work/p/ids"
  # The floor: the same writes by raw SQL on a copy, alone on the machine; then the same
  # pass by `tombstone purge` on another copy, alone too (batch pauses included).
  cp "$work/p/data/t.db" "$work/p/floor.db"
  "$bins/floor" "$work/p/floor.db" "${PURGE_BATCH:-5000}"
  rm -f "$work/p/floor.db"*
  mkdir -p "$work/alone/data"; cp "$work/p/data/t.db" "$work/alone/data/t.db"
  cp "$work/p/tombstone.toml" "$work/alone/"
  echo "tombstone purge, alone: $("$tomb" purge --config "$work/alone/tombstone.toml" --json)"
  rm -rf "$work/alone"
  start "$work/p" 9105; k=$(key "$work/p")
  pin=()
  if [ "${ISOLATE:-0}" = 1 ]; then
    pid=$(jobs -p | tail -1)
    (sleep 12; for t in /proc/"$pid"/task/*; do
       case "$(cat "$t/comm")" in
         tombstone-backg*|tombstone-check*|tombstone-index*) taskset -p -c 1 "${t##*/}" > /dev/null ;;
         *) taskset -p -c 0 "${t##*/}" > /dev/null ;;
       esac
     done) &
    pin=(taskset -c 0)
  fi
  # Open-loop reads (GET by id, 1 in 10 a list page) from start to finish; the first pass
  # starts 15 s after the server, so the samples split into before / during / after.
  "${pin[@]}" "$bins/load" http://127.0.0.1:9105 "$k" "$work/p/ids" "${RATE:-4000}" "${SECS:-45}"
  grep "purge pass finished" "$work/p/server.log" | tail -1
  ;;
events)
  # One delete at a time on an idle server: the time from its 204 to its event on an open
  # SSE stream and at a local webhook receiver (eventlat listens on 127.0.0.1:9108).
  mkdir -p "$work/e"
  config "$work/e" $'[[webhooks]]\nurl = "http://127.0.0.1:9108/hook"\nsecret = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3"\nevents = ["record.deleted"]'
  "$tomb" migrate --config "$work/e/tombstone.toml" > /dev/null
  start "$work/e" 9107; k=$(key "$work/e")
  "$bins/eventlat" http://127.0.0.1:9107 "$k" "${N:-1000}" 127.0.0.1:9108
  ;;
stores)
  n=${N:-300000}
  stores=${STORES:-sqlite postgres}
  pg_url=""
  if [[ " $stores " == *" postgres "* ]]; then
    pg_dir=$(mktemp -d)  # not under $work: the cluster's user must reach it
    "$root/scripts/postgres" start --durable "$pg_dir" > "$work/pg.url"
    trap '"$root/scripts/postgres" stop "$pg_dir"; kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
    pg_url=$(cat "$work/pg.url")
    pgbin=$(cat "$pg_dir/bindir")
    psql "$pg_url" -qc "create database bench" -c "create database pgbench"
    "$pgbin/pgbench" -i -s 10 -q "${pg_url%/postgres}/pgbench" > /dev/null 2>&1
  fi
  "$bins/bare" 127.0.0.1:9101 2> /dev/null & sleep 0.5
  port=9110
  for store in $stores; do
    for mode in warm cold; do
      d="$work/$store-$mode"; mkdir -p "$d"
      cache=""; [ "$mode" = cold ] && cache=$'[cache]\ncapacity = 0'
      config "$d" "$cache"
      if [ "$store" = postgres ]; then
        sed -i "s|^url = \"sqlite://data/t.db\"|url = \"${pg_url%/postgres}/bench\"\npool_size = 32|" "$d/tombstone.toml"
      fi
    done
    d="$work/$store-warm"
    "$tomb" migrate --config "$d/tombstone.toml" > /dev/null
    if [ "$store" = postgres ]; then
      db="${pg_url%/postgres}/bench"
      psql "$db" -qc "insert into rec_products (tenant, id, version, created_at, updated_at, f_sku, f_name)
        select 'bench', 'p' || lpad(i::text, 8, '0'), 1, 0, 0, 'SKU-' || lpad(i::text, 8, '0'), 'Product ' || i
        from generate_series(1, $n) i" -c "vacuum analyze rec_products"
      psql "$db" -Atc "select id from rec_products order by random()" > "$work/$store.ids"
    else
      "$bins/seed" "$d/data/t.db" bench "$n" 0 > /dev/null
      mkdir -p "$work/$store-cold/data"; cp "$d/data/t.db" "$work/$store-cold/data/t.db"
      "$bins/idlist" "$d/data/t.db" "$n" | shuf > "$work/$store.ids"
    fi
    sed -n 1,10000p "$work/$store.ids" > "$work/$store.get-ids"
    for mode in warm cold; do
      port=$((port + 1)); start "$work/$store-$mode" $port; k=$(key "$work/$store-$mode")
      IDS="$work/$store.get-ids" wrk -t1 -c4 -d3s -s "$here/random_get.lua" -H "Authorization: Bearer $k" http://127.0.0.1:$port > /dev/null
      wrk_run "bare axum JSON endpoint" "http://127.0.0.1:9101/v1/products/x"
      IDS="$work/$store.get-ids" wrk_run "$store GET, cache $mode" -s "$here/random_get.lua" -H "Authorization: Bearer $k" http://127.0.0.1:$port
      kill "$(jobs -p | tail -1)" 2>/dev/null || true; sleep 1
    done
    port=$((port + 1)); start "$work/$store-warm" $port; k=$(key "$work/$store-warm")
    from=10001; slice=$(( (n - 10000) / 3 ))
    for c in 1 8 32; do
      t=$(( c < 2 ? 1 : 2 ))
      sed -n "${from},$((from + slice - 1))p" "$work/$store.ids" > "$work/del.ids"; from=$((from + slice))
      conns=$c threads=$t IDS="$work/del.ids" THREADS=$t wrk_run "$store DELETE, $c conn" -s "$here/delete.lua" -H "Authorization: Bearer $k" http://127.0.0.1:$port
      if [ "$store" = postgres ]; then
        out=$("$pgbin/pgbench" -c $c -j $t -T "$secs" -n "${pg_url%/postgres}/pgbench" 2>/dev/null | awk '/^tps/ {print $3}')
        printf "%-34s %10s tps\n" "pgbench read-write, $c clients" "$out"
      fi
    done
    kill "$(jobs -p | tail -1)" 2>/dev/null || true; sleep 1
  done
  ;;
replicas)
  n=${N:-300000}; total_conns=${CONNS:-30}; hz=$(getconf CLK_TCK)
  pg_dir=$(mktemp -d)  # not under $work: the cluster's user must reach it
  "$root/scripts/postgres" start --durable "$pg_dir" > "$work/pg.url"
  trap '"$root/scripts/postgres" stop "$pg_dir"; kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work" "$pg_dir"' EXIT
  pg_url=$(cat "$work/pg.url"); db="${pg_url%/postgres}/bench"
  psql "$pg_url" -qc "create database bench"
  d0="$work/r"; mkdir -p "$d0"; config "$d0" "${CACHE:+$(printf '[cache]\nurl = "%s"' "$CACHE")}"
  sed -i "s|^url = \"sqlite://data/t.db\"|url = \"$db\"\npool_size = 16|" "$d0/tombstone.toml"
  "$tomb" migrate --config "$d0/tombstone.toml" > /dev/null
  psql "$db" -qc "insert into rec_products (tenant, id, version, created_at, updated_at, f_sku, f_name)
    select 'bench', 'p' || lpad(i::text, 8, '0'), 1, 0, 0, 'SKU-' || lpad(i::text, 8, '0'), 'Product ' || i
    from generate_series(1, $n) i" -c "vacuum analyze rec_products"
  psql "$db" -Atc "select id from rec_products order by random()" > "$work/ids"
  sed -n 1,10000p "$work/ids" > "$work/gets"
  k=$(key "$d0")
  # CPU ticks (utime + stime) of the given processes; for the postmaster, its reaped
  # children's too (a backend that exits leaves its time there).
  ticks() { local t=0 p; for p in "$@"; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13 + $14 + $15}')))
  done; echo "$t"; }
  pg_pids() { local pm; pm=$(head -1 "$pg_dir/data/postmaster.pid"); echo "$pm" $(pgrep -P "$pm"); }
  from=10001; slice=$(( (n - 10000) / 9 ))
  printf "%-9s %10s %9s %9s %14s %14s\n" replicas "req/s" "p50" "p99" "replicas µs/req" "postgres µs/req"
  for r in 1 2 3; do
    pids=(); ports=()
    for i in $(seq 1 "$r"); do
      d="$work/r$r-$i"; mkdir -p "$d"; cp "$d0/tombstone.toml" "$d/"
      port=$((9140 + 10 * r + i)); start "$d" "$port"; pids+=("$(jobs -p | tail -1)"); ports+=("$port")
      IDS="$work/gets" wrk -t1 -c8 -d5s -s "$here/random_get.lua" -H "Authorization: Bearer $k" "http://127.0.0.1:$port" > /dev/null
    done
    c=$((total_conns / r)); before=$(ticks "${pids[@]}"); before_pg=$(ticks $(pg_pids)); wrks=()
    for i in $(seq 1 "$r"); do
      sed -n "${from},$((from + slice - 1))p" "$work/ids" > "$work/dels-$r-$i"; from=$((from + slice))
      GETS="$work/gets" DELS="$work/dels-$r-$i" THREADS=1 wrk -t1 -c$c -d${secs}s --latency -s "$here/mixed.lua" \
        -H "Authorization: Bearer $k" "http://127.0.0.1:${ports[$((i - 1))]}" > "$work/wrk-$r-$i" &
      wrks+=($!)
    done
    wait "${wrks[@]}"
    after=$(ticks "${pids[@]}"); after_pg=$(ticks $(pg_pids))
    reqs=$(cat "$work"/wrk-$r-* | awk '/requests in/ {s += $1} END {print s}')
    errs=$(cat "$work"/wrk-$r-* | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
    # The slowest replica's percentiles (wrk reports each run's own).
    p50=$(cat "$work"/wrk-$r-* | awk '$1=="50%" {print $2}' | sort -h | tail -1)
    p99=$(cat "$work"/wrk-$r-* | awk '$1=="99%" {print $2}' | sort -h | tail -1)
    awk -v r="$r" -v q="$reqs" -v s="$secs" -v a="$((after - before))" -v b="$((after_pg - before_pg))" -v hz="$hz" \
      -v p50="$p50" -v p99="$p99" 'BEGIN {
        printf "%-9s %10.0f %9s %9s %14.0f %14.0f\n", r, q / s, p50, p99, a / hz * 1e6 / q, b / hz * 1e6 / q }'
    [ -z "$errs" ] || echo "  $errs"
    # Writes per commit on each replica (its group committer's histogram since it started;
    # the warm-up only reads).
    groups=$(for p in "${ports[@]}"; do curl -s "http://127.0.0.1:$p/metrics" |
      awk '/^tombstone_write_group_size_sum/ {s = $2} /^tombstone_write_group_size_count/ {c = $2}
           END {if (c > 0) printf "%.1f ", s / c; else printf "- "}'; done)
    echo "  writes per commit, each replica: $groups"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  done
  ;;
cost)
  n=${N:-100000}
  port=9130
  for entry in ${BINS:-current=$tomb}; do  # a label may repeat: runs alternate between builds
    label=${entry%%=*}; tomb=${entry#*=}
    d="$work/cost-$port"; mkdir -p "$d"; config "$d" ""
    "$tomb" migrate --config "$d/tombstone.toml" > /dev/null
    "$bins/seed" "$d/data/t.db" bench "$n" 0 > /dev/null
    "$bins/idlist" "$d/data/t.db" "$n" | shuf --random-source=<(yes) > "$d/ids"
    sed -n 1,10000p "$d/ids" > "$d/get-ids"; sed -n '10001,$p' "$d/ids" > "$d/del-ids"
    port=$((port + 1)); start "$d" $port; k=$(key "$d"); pid=$(jobs -p | tail -1)
    IDS="$d/get-ids" wrk -t1 -c4 -d3s -s "$here/random_get.lua" -H "Authorization: Bearer $k" http://127.0.0.1:$port > /dev/null
    for what in GET DELETE; do
      script=random_get.lua; ids="$d/get-ids"
      [ "$what" = DELETE ] && { script=delete.lua; ids="$d/del-ids"; }
      perf stat -x, -e instructions:u,task-clock -p "$pid" -o "$d/perf" &
      perf_pid=$!; sleep 0.2
      out=$(THREADS=2 IDS="$ids" wrk -t2 -c32 -d${secs}s -s "$here/$script" -H "Authorization: Bearer $k" http://127.0.0.1:$port)
      kill -INT $perf_pid; wait $perf_pid 2>/dev/null || true
      reqs=$(echo "$out" | awk '/requests in/ {print $1}')
      instr=$(awk -F, '/instructions/ {print $1}' "$d/perf")
      clock=$(awk -F, '/task-clock/ {print $1}' "$d/perf")
      # A virtual machine often has no hardware counters: then CPU time alone.
      awk -v l="$label $what" -v r="$reqs" -v i="$instr" -v c="$clock" -v s="$secs" 'BEGIN {
        printf "%-22s %9d req  %7.0f req/s  %6.1f us CPU/req", l, r, r/s, 1000*c/r
        if (i ~ /^[0-9]+$/) printf "  %9.0f instructions/req", i/r
        printf "\n" }'
    done
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; sleep 1
  done
  ;;
tail)
  n=${N:-100000}; port=9150; what=${WHAT:-DELETE}
  script=delete.lua; [ "$what" = POST ] && script=post.lua; [ "$what" = PATCH ] && script=patch.lua
  for entry in ${BINS:-current=$tomb}; do
    label=${entry%%=*}; tomb=${entry#*=}
    d="$work/tail-$port"; mkdir -p "$d"; config "$d" ""
    "$tomb" migrate --config "$d/tombstone.toml" > /dev/null
    "$bins/seed" "$d/data/t.db" bench "$n" 0 > /dev/null
    "$tomb" reindex --config "$d/tombstone.toml" > /dev/null
    "$bins/idlist" "$d/data/t.db" "$n" | shuf > "$d/ids"
    port=$((port + 1)); start "$d" $port; k=$(key "$d"); pid=$(jobs -p | tail -1)
    out=$(THREADS=2 IDS="$d/ids" wrk -t2 -c32 -d${secs}s --latency -s "$here/$script" -H "Authorization: Bearer $k" http://127.0.0.1:$port)
    echo "$out" | awk -v l="$label" -v w="$what" '/Requests\/sec/ {r=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} /Non-2xx/ {bad=$NF}
      function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; return v*1000 }
      END { printf "%-10s %-6s %8.0f req/s  p50 %8s  p99 %8s  p99/p50 %5.1f%s\n", l, w, r, p50, p99, ms(p99)/ms(p50),
            bad ? "  (" bad " answers not 2xx)" : "" }'
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$d"
  done
  ;;
profile)
  n=${N:-100000}; what=${WHAT:-DELETE}
  d="$work/profile"; mkdir -p "$d"; config "$d" ""
  "$tomb" migrate --config "$d/tombstone.toml" > /dev/null
  "$bins/seed" "$d/data/t.db" bench "$n" 0 > /dev/null
  "$bins/idlist" "$d/data/t.db" "$n" | shuf --random-source=<(yes) > "$d/ids"
  script=random_get.lua; [ "$what" = DELETE ] && script=delete.lua
  start "$d" 9140; k=$(key "$d"); pid=$(jobs -p | tail -1)
  if [ -n "${CALLERS:-}" ]; then  # CALLERS=symbol: who calls it (dwarf call graphs, fewer samples)
    perf record -F 199 --call-graph dwarf,16384 -p "$pid" -o "$d/perf.data" 2> /dev/null &
  else
    perf record -F 999 -p "$pid" -o "$d/perf.data" 2> /dev/null &
  fi
  perf_pid=$!; sleep 0.3
  THREADS=2 IDS="$d/ids" wrk -t2 -c32 -d${secs}s -s "$here/$script" -H "Authorization: Bearer $k" http://127.0.0.1:9140 | grep -E "Requests/sec|99%"
  kill -INT $perf_pid; wait $perf_pid 2>/dev/null || true
  echo "-- by thread"; perf report -i "$d/perf.data" --sort comm,dso --stdio 2> /dev/null | grep -E '^ +[0-9]' | head -16 || true
  echo "-- by symbol"; perf report -i "$d/perf.data" --sort comm,symbol --stdio 2> /dev/null | sed "s/  *-  *-  *$//" | grep -E '^ +[0-9]' | head -${TOP:-60} || true
  if [ -n "${CALLERS:-}" ]; then
    echo "-- callers of $CALLERS"
    perf report -i "$d/perf.data" --no-children -g callee -S "$CALLERS" --stdio 2> /dev/null | grep -v "^$" | head -${TOP:-60} || true
  fi
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  ;;
suite)
  n=${N:-100000}; runs=${RUNS:-3}; wsecs=${WSECS:-4}
  cores=$(nproc); pin_srv=(); pin_wrk=()
  if [ "$cores" -ge 4 ] && command -v taskset > /dev/null; then
    pin_srv=(taskset -c "0-$((cores - 2))"); pin_wrk=(taskset -c "$((cores - 1))")
    echo "wrk pinned to CPU $((cores - 1)), the servers to CPUs 0-$((cores - 2))"
  else
    echo "$cores cores: wrk and the servers share them (no pinning)"
  fi
  uptime
  mkdir -p "$work/sw" "$work/sc"
  config "$work/sw" ""
  config "$work/sc" $'[cache]\ncapacity = 0'
  "$tomb" migrate --config "$work/sw/tombstone.toml" > /dev/null
  "$bins/seed" "$work/sw/data/t.db" bench "$n" 0 > /dev/null
  "$tomb" reindex --config "$work/sw/tombstone.toml" > /dev/null
  mkdir -p "$work/sc/data"; cp "$work/sw/data/t.db" "$work/sc/data/t.db"
  "$bins/idlist" "$work/sw/data/t.db" "$n" | shuf > "$work/ids"
  # GETs: uniform over every record, and Zipf (s = 1.1) over them: a file of draws in which
  # each id appears as often as Zipf says (random_get.lua draws uniformly from the file).
  python3 - "$work/ids" "$work/zipf" <<'PY'
import bisect, itertools, random, sys
ids = open(sys.argv[1]).read().split()
weights = list(itertools.accumulate(1 / (k ** 1.1) for k in range(1, len(ids) + 1)))
rng = random.Random(7)
with open(sys.argv[2], "w") as out:
    for _ in range(200000):
        out.write(ids[min(bisect.bisect(weights, rng.random() * weights[-1]), len(ids) - 1)] + "\n")
PY
  "${pin_srv[@]}" "$bins/bare" 127.0.0.1:9101 2> /dev/null & sleep 0.5
  start_pinned() { : > "$1/server.log"
    "${pin_srv[@]}" "$tomb" serve --config "$1/tombstone.toml" --listen "127.0.0.1:$2" --log-format json 2> "$1/server.log" &
    for _ in $(seq 1 100); do grep -q "listening on" "$1/server.log" 2>/dev/null && return; sleep 0.1; done
    echo "server did not start"; cat "$1/server.log"; exit 1; }
  start_pinned "$work/sw" 9161; kw=$(key "$work/sw")
  start_pinned "$work/sc" 9162; kc=$(key "$work/sc")
  # Deletes: each run its own slice of the last three quarters of the shuffled ids (the
  # reads, all done before, draw from every id).
  slice=$(( n * 3 / (4 * runs) ))
  one() { # scenario, run → "req/s p50 p99" (wrk's units normalised to ms)
    local s=$1 r=$2 out
    case "$s" in
      bare)        out=$("${pin_wrk[@]}" wrk -t2 -c32 -d${secs}s --latency "http://127.0.0.1:9101/v1/products/x") ;;
      get_uniform) out=$(IDS="$work/ids" "${pin_wrk[@]}" wrk -t2 -c32 -d${secs}s --latency -s "$here/random_get.lua" -H "Authorization: Bearer $kw" http://127.0.0.1:9161) ;;
      get_zipf)    out=$(IDS="$work/zipf" "${pin_wrk[@]}" wrk -t2 -c32 -d${secs}s --latency -s "$here/random_get.lua" -H "Authorization: Bearer $kw" http://127.0.0.1:9161) ;;
      get_nocache) out=$(IDS="$work/ids" "${pin_wrk[@]}" wrk -t2 -c32 -d${secs}s --latency -s "$here/random_get.lua" -H "Authorization: Bearer $kc" http://127.0.0.1:9162) ;;
      list)        out=$("${pin_wrk[@]}" wrk -t2 -c32 -d${secs}s --latency -H "Authorization: Bearer $kw" "http://127.0.0.1:9161/v1/products?limit=50") ;;
      search)      out=$("${pin_wrk[@]}" wrk -t2 -c32 -d${secs}s --latency -H "Authorization: Bearer $kw" "http://127.0.0.1:9161/v1/products?q=teapot&limit=50") ;;
      post)        out=$(RUN=$r "${pin_wrk[@]}" wrk -t2 -c32 -d${wsecs}s --latency -s "$here/post.lua" -H "Authorization: Bearer $kw" http://127.0.0.1:9161) ;;
      delete)      sed -n "$((n - r * slice + 1)),$((n - (r - 1) * slice))p" "$work/ids" > "$work/del.ids"
                   out=$(THREADS=2 IDS="$work/del.ids" "${pin_wrk[@]}" wrk -t2 -c32 -d${wsecs}s --latency -s "$here/delete.lua" -H "Authorization: Bearer $kw" http://127.0.0.1:9161) ;;
    esac
    echo "$out" | grep -qE "Non-2xx|Socket errors" && echo "$out" | grep -E "Non-2xx|Socket errors" >&2
    echo "$out" | awk 'function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
      /Requests\/sec/ {r = $2} $1 == "50%" {p50 = ms($2)} $1 == "99%" {p99 = ms($2)} END {printf "%s %.3f %.3f\n", r, p50, p99}'
  }
  scenarios="bare get_uniform get_zipf get_nocache list search post delete"
  # Reads interleaved run by run (the machine's drift falls on all of them alike), then the
  # writes, so that no GET meets a record a DELETE run removed.
  plan=$(for r in $(seq 1 "$runs"); do for s in bare get_uniform get_zipf get_nocache list search; do echo "$s $r"; done; done
         for s in post delete; do for r in $(seq 1 "$runs"); do echo "$s $r"; done; done)
  while read -r s r; do
    res=$(one "$s" "$r"); echo "$s $res" >> "$work/results"
    printf "run %d  %-12s %10s req/s   p50 %7s ms   p99 %7s ms\n" "$r" "$s" $res
  done <<< "$plan"
  echo "-- medians of $runs runs (N=$n, ${secs}s reads, ${wsecs}s writes, 32 connections)"
  median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
  bare=$(awk '$1 == "bare" {print $2}' "$work/results" | median)
  list=$(awk '$1 == "list" {print $2}' "$work/results" | median)
  for s in $scenarios; do
    rps=$(awk -v s="$s" '$1 == s {print $2}' "$work/results" | median)
    p50=$(awk -v s="$s" '$1 == s {print $3}' "$work/results" | median)
    p99=$(awk -v s="$s" '$1 == s {print $4}' "$work/results" | median)
    awk -v s="$s" -v r="$rps" -v a="$p50" -v b="$p99" -v bare="$bare" 'BEGIN {
      printf "%-12s %10.0f req/s   p50 %7.2f ms   p99 %7.2f ms   p99/p50 %5.1f   vs bare %5.0f%%\n", s, r, a, b, (a > 0 ? b / a : 0), 100 * r / bare }'
  done
  search=$(awk '$1 == "search" {print $2}' "$work/results" | median)
  awk -v s="$search" -v l="$list" 'BEGIN {printf "search page / list page: %.0f%%\n", 100 * s / l}'
  ;;
interference)
  # What any busy thread in the idle CPU class costs live reads on this machine: the same
  # open-loop load alone, beside a spin loop in SCHED_IDLE, beside one at nice 19.
  mkdir -p "$work/i"; config "$work/i" ""
  "$tomb" migrate --config "$work/i/tombstone.toml" > /dev/null
  "$bins/seed" "$work/i/data/t.db" bench 100000 0
  "$bins/idlist" "$work/i/data/t.db" 5000 > "$work/i/ids"
  start "$work/i" 9106; k=$(key "$work/i")
  load() { "$bins/load" http://127.0.0.1:9106 "$k" "$work/i/ids" "${RATE:-4000}" 15 | tail -4; }
  echo "alone:"; load
  echo "beside a SCHED_IDLE spin loop:"
  chrt -i 0 timeout 16 sh -c 'while :; do :; done' & load; wait $! || true
  echo "beside a nice 19 spin loop:"
  timeout 16 nice -n 19 sh -c 'while :; do :; done' & load; wait $! || true
  ;;
esac
