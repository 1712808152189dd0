#!/usr/bin/env python3
"""Loads N distinct configs or instances into r-nacos or Mast (for the RSS measurement of
scripts/nacos-compare.sh), over keep-alive connections, checking every response.

    load.py nacos|mast configs|instances BASE_URL N [CONNECTIONS]

Names match scripts/nacos/bench.lua's load-configs / load-instances: configs load-1..load-N in
namespace "bench", group DEFAULT_GROUP, content "v-load-<i>-x..."; instances load-<i> spread over
services load-0..load-99 at 10.a.b.c:8001. Exits non-zero if any request failed.
"""
import http.client
import json
import sys
import threading
import urllib.parse

target, kind, base, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
conns = int(sys.argv[5]) if len(sys.argv) > 5 else 8
u = urllib.parse.urlsplit(base)
PAD = "x" * 64
# As scripts/nacos/bench.lua: per-instance timeouts (ms) so instances without beats stay.
KEEP_ALIVE_METADATA = json.dumps({"preserved.heart.beat.timeout": "36000000",
                                  "preserved.ip.delete.timeout": "72000000"})


def ip_of(i):
    return "10.%d.%d.%d" % ((i // 62500) % 250, (i // 250) % 250, i % 250 + 1)


def req(i):
    if kind == "configs":
        did, content = "load-%d" % i, "v-load-%d-%s" % (i, PAD)
        if target == "nacos":
            body = urllib.parse.urlencode(
                {"dataId": did, "group": "DEFAULT_GROUP", "content": content, "tenant": "bench"})
            return ("POST", "/nacos/v1/cs/configs", body,
                    "application/x-www-form-urlencoded", lambda s, b: s == 200 and b == b"true")
        body = json.dumps({"content": content, "format": "text"})
        return ("PUT", "/mast/v1/configs/bench/DEFAULT_GROUP/" + did, body, "application/json",
                lambda s, b: s == 200 and b'"md5"' in b)
    svc, iid = "load-%d" % (i % 100), "load-%d" % i
    if target == "nacos":
        body = urllib.parse.urlencode({"serviceName": svc, "ip": ip_of(i), "port": "8001",
                                       "ephemeral": "true", "namespaceId": "bench",
                                       "metadata": KEEP_ALIVE_METADATA})
        return ("POST", "/nacos/v1/ns/instance", body, "application/x-www-form-urlencoded",
                lambda s, b: s == 200 and b == b"ok")
    body = json.dumps({"id": iid, "host": ip_of(i), "port": 8001, "ttl": 3600})
    return ("POST", "/mast/v1/services/%s/instances" % svc, body, "application/json",
            lambda s, b: s == 201 and b'"leaseId"' in b)


lock = threading.Lock()
state = {"next": 1, "ok": 0, "failed": 0, "first_error": None}


def worker():
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    while True:
        with lock:
            i = state["next"]
            state["next"] += 1
        if i > n:
            break
        method, path, body, ctype, check = req(i)
        try:
            c.request(method, path, body=body, headers={"Content-Type": ctype})
            r = c.getresponse()
            data = r.read()
            good = check(r.status, data)
            err = None if good else "%d %r" % (r.status, data[:200])
        except Exception as e:  # noqa: BLE001 - report and reconnect
            good, err = False, repr(e)
            c.close()
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        with lock:
            if good:
                state["ok"] += 1
            else:
                state["failed"] += 1
                state["first_error"] = state["first_error"] or err
    c.close()


threads = [threading.Thread(target=worker) for _ in range(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("loaded ok=%d failed=%d%s" % (state["ok"], state["failed"],
      "" if not state["first_error"] else " first_error=" + state["first_error"]))
sys.exit(1 if state["failed"] else 0)
