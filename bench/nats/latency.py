#!/usr/bin/env python3
"""Commit -> NATS publish latency: N sequential creates through the API; for each, the time
from its 201 (the commit has happened) to the arrival of its record.created event at a core
NATS subscriber of the relay's subject (the server forwards a JetStream publish to core
subscribers when it stores it). Prints p50/p99/max in ms. Standard library only.

usage: latency.py BASE_URL API_KEY NATS_HOST:PORT TENANT N
"""
import json
import socket
import sys
import threading
import time
import urllib.request

base, key, nats, tenant, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
host, port = nats.rsplit(":", 1)
arrived = {}
ready = threading.Event()


def subscriber():
    s = socket.create_connection((host, int(port)))
    f = s.makefile("rb")
    f.readline()  # INFO
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n')
    s.sendall(f"SUB tombstone.{tenant}.products.record.created 1\r\nPING\r\n".encode())
    while True:
        line = f.readline()
        if not line:
            return
        if line.startswith(b"PONG"):
            ready.set()
        elif line.startswith(b"PING"):
            s.sendall(b"PONG\r\n")
        elif line.startswith(b"HMSG"):
            parts = line.split()
            total = int(parts[-1])
            header_len = int(parts[-2])
            data = f.read(total + 2)[header_len:total]
            arrived[json.loads(data)["record_id"]] = time.perf_counter()


threading.Thread(target=subscriber, daemon=True).start()
ready.wait(10)
sent = {}
for i in range(n):
    body = json.dumps({"name": f"p{i}"}).encode()
    req = urllib.request.Request(f"{base}/v1/products", data=body, method="POST",
                                 headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        rid = json.loads(r.read())["id"]
        sent[rid] = time.perf_counter()
    # Sequential, and one at a time: wait for the event before the next write.
    deadline = time.perf_counter() + 10
    while rid not in arrived and time.perf_counter() < deadline:
        time.sleep(0.0002)
lat = sorted((arrived[r] - sent[r]) * 1000 for r in sent if r in arrived)
missing = n - len(lat)
pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"commit->publish over {len(lat)} creates: p50 {pct(0.5):.2f} ms, p99 {pct(0.99):.2f} ms, max {lat[-1]:.2f} ms"
      + (f", {missing} never arrived" if missing else ""))
