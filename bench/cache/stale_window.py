"""The stale window between two replicas: see run.sh. Standard library only.

Each replica is reached over one kept-alive HTTP/1.1 connection (http.client), so a read
costs one loopback round trip plus the server's work.
"""
import http.client
import json
import sys
import time
import urllib.parse


def connect(base):
    u = urllib.parse.urlparse(base)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=10)


def call(conn, method, path, key, body=None):
    headers = {"Authorization": f"Bearer {key}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
        body = json.dumps(body)
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    return r.status, data


def pct(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))]


def main():
    a_url, b_url, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    a, b = connect(a_url), connect(b_url)
    ids = []
    for i in range(n):
        status, data = call(a, "POST", "/v1/products", key, {"name": f"p{i}"})
        assert status == 201, (status, data)
        ids.append(json.loads(data)["id"])
    windows, stale, first_read = [], 0, []
    for rid in ids:
        path = f"/v1/products/{rid}"
        for _ in range(2):  # cached on B now
            assert call(b, "GET", path, key)[0] == 200
        status, _ = call(a, "DELETE", path, key)
        assert status == 204, status
        answered = time.perf_counter()
        reads = 0
        while True:
            status, _ = call(b, "GET", path, key)
            reads += 1
            if status == 404:
                break
            assert status == 200, status
            stale += 1
            if time.perf_counter() - answered > 10:
                sys.exit(f"{rid}: still served by B 10 s after its delete")
        windows.append((time.perf_counter() - answered) * 1000)
        first_read.append(reads == 1)
    windows.sort()
    print(f"{n} deletes on A, B read from each 204 until its first 404")
    print(f"  window (ms, includes the 404 read's own round trip): "
          f"p50 {pct(windows, 50):.2f}  p99 {pct(windows, 99):.2f}  max {windows[-1]:.2f}")
    print(f"  stale reads (200 after the 204): {stale} in total; "
          f"the first read was already 404 for {sum(first_read)}/{n} deletes")


if __name__ == "__main__":
    main()
