#!/usr/bin/env bash
# Files (SPEC §15): the server's memory while a large file is uploaded and downloaded, and
# the throughput of both, through the real binary over HTTP.
#   bench/files/run.sh                 a 100 MiB file, local files store
#   MIB=…                              another size
#   FILES=s3                           an S3-compatible store instead (scripts/s3: moto,
#                                      started and stopped here)
#   TOMBSTONE_BIN=…                    a release binary already built (else: cargo build --release)
# Memory: the server's VmHWM (peak resident set) from /proc, read after start-up, after
# the upload and after the download: the difference is what the transfer cost. A body
# held whole would add the file's size. Prints figures; nothing is asserted.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
s3_dir=""
cleanup() {
  kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true
  if [ -n "$s3_dir" ]; then "$root/scripts/s3" stop "$s3_dir" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
mib=${MIB:-100}

if [ -z "${TOMBSTONE_BIN:-}" ]; then (cd "$root" && cargo build --release --quiet --bin tombstone); fi
tomb="${TOMBSTONE_BIN:-$root/target/release/tombstone}"

files='url = "file://data/files"'
if [ "${FILES:-local}" = s3 ]; then
  s3_dir=$(mktemp -d)
  rmdir "$s3_dir"
  endpoint=$("$root/scripts/s3" start "$s3_dir")
  files=$'url = "s3://tombstone-test/bench"\nendpoint = "'"$endpoint"$'"\nregion = "us-east-1"\naccess_key_id = "test"\nsecret_access_key = "test"'
fi
cat > "$work/tombstone.toml" <<TOML
[storage]
url = "sqlite://data/t.db"
[search]
path = "data/search"
[files]
$files
[collections.docs.fields]
title = { type = "string" }
blob  = { type = "file", max_bytes = "1 GiB" }
TOML
port=$((20000 + RANDOM % 20000))
key=$("$tomb" keys create --config "$work/tombstone.toml" --tenant t1 --scopes admin --json | python3 -c 'import json,sys;print(json.load(sys.stdin)["secret"])')
"$tomb" serve --config "$work/tombstone.toml" --listen "127.0.0.1:$port" 2>"$work/server.log" &
pid=$!
for _ in $(seq 1 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done
base="http://127.0.0.1:$port"
hwm() { awk '/VmHWM/ {print $2}' "/proc/$pid/status"; }

head -c $((mib * 1024 * 1024)) /dev/urandom > "$work/blob"
id=$(curl -sf -H "Authorization: Bearer $key" -H 'content-type: application/json' -d '{"title":"big"}' "$base/v1/docs" | python3 -c 'import json,sys;print(json.load(sys.stdin)["id"])')
before=$(hwm)
up=$(curl -sf -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $key" -H 'content-type: application/octet-stream' \
  -X PUT --data-binary @"$work/blob" "$base/v1/docs/$id/files/blob")
after_up=$(hwm)
down=$(curl -sf -o "$work/back" -w '%{time_total}' -H "Authorization: Bearer $key" "$base/v1/docs/$id/files/blob")
after_down=$(hwm)
cmp -s "$work/blob" "$work/back" || { echo "the downloaded bytes differ"; exit 1; }
echo "file: $mib MiB, store: ${FILES:-local}"
echo "peak RSS after start-up: $((before / 1024)) MiB"
echo "upload:   $up s ($(python3 -c "print(round($mib / $up, 1))") MiB/s), peak RSS after: $((after_up / 1024)) MiB (+$(((after_up - before) / 1024)) MiB)"
echo "download: $down s ($(python3 -c "print(round($mib / $down, 1))") MiB/s), peak RSS after: $((after_down / 1024)) MiB (+$(((after_down - before) / 1024)) MiB)"
