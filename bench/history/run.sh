#!/usr/bin/env bash
# History (SPEC §14) on SQLite, through the store API (no HTTP), release build:
#   bench/history/run.sh          as_of GET by id and an as_of list page (50) against the plain
#                                 ones, and storage per version; R records × V versions
#                                 (R=100000 V=10: 1,000,000 version rows; READS=… samples;
#                                 DB=/abs/path keeps the loaded database for the next run;
#                                 SPLIT=1 also times an as-of page's SQL and its body reading)
#   bench/history/run.sh write    create and soft DELETE cost through the store (N=…), to compare
#                                 builds: run it at two commits
# Prints figures; nothing is asserted. Both are cargo benches of tombstone-store, built into
# the workspace's own target directory.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
case "${1:-asof}" in
  write) cargo bench -p tombstone-store --bench write_cost ;;
  *) cargo bench -p tombstone-store --bench history ;;
esac
