"""Measures three running keygate nodes and their PostgreSQL (bench/capacity/three-nodes.sh
sets the environment); prints Markdown tables."""

import http.client
import json
import os
import re
import statistics
import subprocess
import time

ENV = os.environ
ADDRS = ENV["ADDRS"].split()
NODE_PIDS = [int(p) for p in ENV["NODE_PIDS"].split()]
URL = ENV["URL"]
WORK = ENV["WORK"]
DURATION = int(ENV["DURATION"])
FLUSH = int(ENV["USAGE_FLUSH_SECONDS"])
TOKEN = ENV["ADMIN_TOKEN"]
ACCOUNT = "acct_000000000000000000bench"
TICK = os.sysconf("SC_CLK_TCK")
# Idle PostgreSQL backends report their statistics within 10 s.
STATS_SETTLE = 11


def psql(sql):
    out = subprocess.run(["psql", "-At", "-d", URL, "-c", sql], check=True,
                         capture_output=True, text=True).stdout
    return out.strip()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def postmaster():
    # The checkpointer lives as long as the server (a psql backend is gone once it answered).
    backend = int(psql("select pid from pg_stat_activity where backend_type = 'checkpointer'"))
    with open(f"/proc/{backend}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


PG_MAIN = postmaster()


def pg_cpu():
    """CPU seconds of the postmaster and every process it started."""
    total = cpu_seconds(PG_MAIN)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == PG_MAIN:
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def metrics(addr):
    conn = http.client.HTTPConnection(addr, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    values = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        base = name.split("{", 1)[0]
        values[base] = values.get(base, 0.0) + float(value)
    return values


def snapshot():
    row = psql("select xact_commit, tup_inserted + tup_updated + tup_deleted, "
               "pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') from pg_stat_database "
               "where datname = current_database()").split("|")
    return {
        "at": time.monotonic(),
        "nodes": [metrics(a) for a in ADDRS],
        "node_cpu": [cpu_seconds(p) for p in NODE_PIDS],
        "pg_commits": int(row[0]),
        "pg_rows": int(row[1]),
        "pg_wal": float(row[2]),
        "pg_cpu": pg_cpu(),
        "pg_connections": int(psql("select count(*) from pg_stat_activity "
                                   "where datname = current_database()")),
    }


def to_ms(text):
    m = re.match(r"([0-9.]+)(us|ms|s)$", text)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def load():
    procs = [subprocess.Popen(
        ["wrk", "-t1", f"-c{ENV['CONNECTIONS']}", f"-d{DURATION}s", "--latency",
         "-s", f"{WORK}/rotate.lua", f"http://{addr}/v1/auth", "--", f"{WORK}/hot.txt"],
        stdout=subprocess.PIPE, text=True) for addr in ADDRS]
    results = []
    for p in procs:
        out = p.communicate()[0]
        rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
        p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        results.append((rps, p99, int(bad.group(1)) if bad else 0))
    return results


def request(conn, method, path, body=None, bearer=TOKEN, headers=None):
    h = {"Authorization": f"Bearer {bearer}"}
    if body is not None:
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=h)
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, data


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main():
    before = snapshot()
    runs = load()
    time.sleep(FLUSH + STATS_SETTLE)
    after = snapshot()
    window = after["at"] - before["at"]

    print("#### Verification load: all three nodes at once, cache hits, usage flushed to PostgreSQL")
    print()
    print(f"{ENV['KEYS']} keys, the same {ENV['HOT']} hot keys used on every node, "
          f"wrk -t1 -c{ENV['CONNECTIONS']} per node for {DURATION} s; the snapshots are "
          f"{window:.1f} s apart (the load, then one flush interval and the statistics' delay).")
    print()
    print("| node | req/s | p99 | refused | verifications | CPU µs per verification | usage flushes | keys written | flush time per key written |")
    print("|---|---|---|---|---|---|---|---|---|")
    total_rps = 0.0
    total_flushed = 0.0
    per_node_written = []
    for i, addr in enumerate(ADDRS):
        b, a = before["nodes"][i], after["nodes"][i]
        verifications = a["keygate_verifications_total"] - b["keygate_verifications_total"]
        cpu = after["node_cpu"][i] - before["node_cpu"][i]
        flushed = a["keygate_usage_flushed_keys_total"] - b["keygate_usage_flushed_keys_total"]
        flushes = a["keygate_usage_flushes_total"] - b["keygate_usage_flushes_total"]
        flush_s = a["keygate_usage_flush_seconds_total"] - b["keygate_usage_flush_seconds_total"]
        rps, p99, bad = runs[i]
        total_rps += rps
        total_flushed += flushed
        per_node_written.append(flushed)
        print(f"| {'abc'[i]} | {rps:,.0f} | {p99:.2f} ms | {bad} | {verifications:,.0f} | "
              f"{cpu * 1e6 / max(verifications, 1):.1f} | {flushes:.0f} | {flushed:,.0f} | "
              f"{flush_s * 1e6 / max(flushed, 1):.1f} µs |")
    print(f"| **all** | **{total_rps:,.0f}** | | | | | | {total_flushed:,.0f} | |")
    print()
    rows = after["pg_rows"] - before["pg_rows"]
    commits = after["pg_commits"] - before["pg_commits"]
    wal = after["pg_wal"] - before["pg_wal"]
    pg_seconds = after["pg_cpu"] - before["pg_cpu"]
    print("| PostgreSQL, over the window | total | per second | per key written by a flush |")
    print("|---|---|---|---|")
    print(f"| rows inserted/updated/deleted | {rows:,} | {rows / window:,.0f} | {rows / max(total_flushed, 1):.2f} |")
    print(f"| commits | {commits:,} | {commits / window:,.1f} | |")
    print(f"| WAL bytes | {wal:,.0f} | {wal / window:,.0f} | {wal / max(total_flushed, 1):,.0f} |")
    print(f"| CPU seconds (all its processes) | {pg_seconds:.2f} | {pg_seconds / window:.3f} | {pg_seconds * 1e6 / max(total_flushed, 1):.1f} µs |")
    print(f"| connections from the nodes | {after['pg_connections']} | | |")
    print()
    hot = int(ENV["HOT"])
    intervals = -(-DURATION // FLUSH)  # flush intervals the load touches, rounded up
    low, high = len(ADDRS) * hot * intervals, len(ADDRS) * hot * (intervals + 1)
    print(f"Model: a node writes each key it served once per flush, however often it served "
          f"it, so keys written ≈ nodes × hot keys × flush intervals touched = 3 × {hot:,} × "
          f"{intervals}–{intervals + 1} = {low:,}–{high:,} for {DURATION} s of load at "
          f"{FLUSH} s per flush; measured {total_flushed:,.0f}. In steady state: nodes × hot "
          f"keys / interval = {len(ADDRS) * hot / FLUSH:,.0f} keys/s whatever the request rate "
          f"(budget per node: {ENV['FLUSH_BUDGET'] if ENV['FLUSH_BUDGET'] != '0' else 'none'}).")
    print()

    # Management writes through node A while all three listen for changes. The flushes'
    # dead rows are vacuumed first, so that autovacuum's work is not counted as theirs.
    psql("VACUUM")
    a = http.client.HTTPConnection(ADDRS[0], timeout=10)
    pg_before, wal_before = pg_cpu(), float(psql("select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"))
    lat = []
    started = time.monotonic()
    for i in range(int(ENV["CREATES"])):
        t = time.monotonic()
        status, _ = request(a, "POST", "/v1/api-keys", {"account_id": ACCOUNT, "name": f"capacity {i}"})
        lat.append((time.monotonic() - t) * 1000)
        assert status == 201, status
    elapsed = time.monotonic() - started
    pg_used = pg_cpu() - pg_before
    wal_used = float(psql("select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")) - wal_before
    creates = int(ENV["CREATES"])
    print("#### Management writes through node A, three nodes listening")
    print()
    print("| operation | per second (one client) | p50 | p99 | PostgreSQL CPU per write | WAL per write |")
    print("|---|---|---|---|---|---|")
    print(f"| `POST /v1/api-keys` ×{creates} | {creates / elapsed:,.0f} | {pct(lat, 50):.2f} ms | "
          f"{pct(lat, 99):.2f} ms | {pg_used * 1e6 / creates:.0f} µs | {wal_used / creates:,.0f} bytes |")

    # Revocation through A reaches B and C.
    b = http.client.HTTPConnection(ADDRS[1], timeout=10)
    c = http.client.HTTPConnection(ADDRS[2], timeout=10)
    fa = {"X-Original-Method": "GET", "X-Original-URI": "/api/v1/invoices/42"}
    delays = []
    for i in range(int(ENV["REVOKES"])):
        status, body = request(a, "POST", "/v1/api-keys",
                               {"account_id": ACCOUNT, "name": f"revoke {i}", "permissions": ["invoices.read"]})
        assert status == 201, status
        created = json.loads(body)
        secret, key_id = created["key"], created["id"]
        for node in (b, c):
            status, _ = request(node, "GET", "/v1/auth", bearer=secret, headers=fa)
            assert status in (200, 204), status
        status, _ = request(a, "POST", f"/v1/api-keys/{key_id}/revoke", {})
        assert status == 200, status
        revoked = time.monotonic()
        pending = [b, c]
        while pending:
            pending = [n for n in pending
                       if request(n, "GET", "/v1/auth", bearer=secret, headers=fa)[0] != 401]
            assert time.monotonic() - revoked < 5, "revocation did not reach every node in 5 s"
        delays.append((time.monotonic() - revoked) * 1000)
    print(f"| revocation through A refused by B and C ×{len(delays)} | | "
          f"{statistics.median(delays):.2f} ms | {pct(delays, 99):.2f} ms (max {max(delays):.2f}) | | |")


if __name__ == "__main__":
    main()
