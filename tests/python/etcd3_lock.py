"""python-etcd3's lock (etcd3.Lock: a key per holder under /locks/<name>, taken in a Txn and
waited for with a watch) against an etcd endpoint: taken, refused to a second holder while
held, handed over on release, and mutual exclusion under contention (threads increment a
counter key while holding the lock; no increment is lost). Prints "ok" last.

    etcd3_lock.py HOST:PORT
"""
import sys
import threading

import etcd3

host, port = sys.argv[1].rsplit(":", 1)
client = etcd3.client(host=host, port=int(port), timeout=10)

first = client.lock("res", ttl=30)
assert first.acquire(timeout=5), "a free lock is taken"
assert first.is_acquired()
second = client.lock("res", ttl=30)
assert not second.acquire(timeout=1), "a held lock is not taken twice"
first.release()
assert second.acquire(timeout=5), "a released lock is taken by the next"
second.release()

WORKERS, ROUNDS = 4, 10
client.put("/py-lock/counter", "0")
errors = []


def worker():
    try:
        c = etcd3.client(host=host, port=int(port), timeout=10)
        for _ in range(ROUNDS):
            with c.lock("counter", ttl=30):
                value, _ = c.get("/py-lock/counter")
                c.put("/py-lock/counter", str(int(value) + 1))
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(repr(e))


threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
for t in threads:
    t.start()
for t in threads:
    t.join(60)
assert not errors, errors
value, _ = client.get("/py-lock/counter")
assert int(value) == WORKERS * ROUNDS, f"counter {value}: mutual exclusion broke"
print("ok")
