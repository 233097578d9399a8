"""Writes N hash-chained audit entries into a migrated Tombstone SQLite database (the
canonical form and hash of tombstone_domain::audit), and moves the chain's head."""
import hashlib
import json
import sqlite3
import sys
from datetime import datetime, timezone

GENESIS = "0" * 64


def main(path, n):
    db = sqlite3.connect(path)
    head = db.execute("select seq, hash from audit_head where id = 1").fetchone()
    first, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
    base = 1_780_000_000_000_000
    rows = []
    insert = ("insert into audit (seq, at, tenant, actor, action, collection, record_id, version, "
              "deletion_id, reason, request_id, prev_hash, hash) values (?,?,?,?,?,?,?,?,?,?,?,?,?)")
    last = first + n - 1
    for seq in range(first, last + 1):
        at = base + seq * 1000
        t = datetime.fromtimestamp(at // 1_000_000, tz=timezone.utc)
        at_text = t.strftime("%Y-%m-%dT%H:%M:%S") + f".{at % 1_000_000:06d}Z"
        entry = {
            "seq": seq, "at": at_text, "tenant": f"t{seq % 7}", "actor": "key_bench",
            "action": "create", "collection": "notes", "record_id": f"rec-{seq:012d}",
            "version": 1, "deletion_id": None, "reason": None, "request_id": f"req-{seq}",
        }
        canonical = json.dumps(entry, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256((prev + "\n" + canonical).encode()).hexdigest()
        rows.append((seq, at, entry["tenant"], "key_bench", "create", "notes", entry["record_id"], 1,
                     None, None, entry["request_id"], prev, digest))
        prev = digest
        if len(rows) == 50_000:
            db.executemany(insert, rows)
            rows.clear()
    if rows:
        db.executemany(insert, rows)
    db.execute("insert or replace into audit_head (id, seq, hash) values (1, ?, ?)", (last, prev))
    db.commit()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
