#!/usr/bin/env bash
# The cost of checking the whole audit chain (what `tombstone audit verify` and the server's
# `audit_verify` worker run), on SQLite: a database migrated by `tombstone migrate`, then N
# hash-chained audit entries written straight into it (bench/audit/seed.py, the canonical
# form of tombstone_domain::audit), then `tombstone audit verify` timed.
#   N=1000000 bench/audit/run.sh
# TOMBSTONE_BIN picks the binary (default: target/release/tombstone). Prints figures;
# nothing is asserted.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${TOMBSTONE_BIN:-$root/target/release/tombstone}"
n="${N:-1000000}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
cat > "$dir/tombstone.toml" <<TOML
[storage]
url = "sqlite://$dir/audit.db"

[collections.notes.fields]
body = { type = "string" }
TOML
"$bin" migrate --config "$dir/tombstone.toml" >/dev/null
python3 "$root/bench/audit/seed.py" "$dir/audit.db" "$n"
echo "audit entries: $n; database: $(du -h "$dir/audit.db" | cut -f1)"
for run in 1 2; do
  start=$(date +%s.%N)
  "$bin" audit verify --config "$dir/tombstone.toml"
  end=$(date +%s.%N)
  echo "run $run: $(echo "$end - $start" | bc) s"
done
