"""A Nacos 2.x client (nacos-sdk-python, gRPC) given every member of a 3-member Mast cluster
keeps its registration and its config listener when the member it is connected to is killed:
it reconnects to another member, registers its instance again (on a lease of the new
connection, so the instance outlives the dead member's lease), and changes still reach its
listener. Run by crates/mast-conformance/tests/nacos_python.rs; arguments: the members' Nacos
addresses, their etcd client URLs and their PIDs (comma-separated, in the same order). Prints
"ok" and exits 0 when every check holds. Every wait is bounded."""

import asyncio
import base64
import json
import os
import signal
import sys
import tempfile
import urllib.request

from v2.nacos import (ClientConfigBuilder, ConfigParam, GRPCConfig, NacosConfigService,
                      NacosNamingService, RegisterInstanceParam, ListInstanceParam)

NACOS = sys.argv[1].split(",")
ETCD = sys.argv[2].split(",")
PIDS = [int(p) for p in sys.argv[3].split(",")]
WAIT = 60.0
KEY = "/services/dev#G@@fo/10.7.0.1#80#DEFAULT"


def post(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=3) as r:
        return json.load(r)


def etcd(path, body, dead):
    """An etcd gateway call to the first member that answers (not a killed one)."""
    last = None
    for i, url in enumerate(ETCD):
        if i in dead:
            continue
        try:
            return post(url, path, body)
        except Exception as e:  # a member still electing: try the next
            last = e
    raise last


def b64(s):
    return base64.b64encode(s.encode()).decode()


def connections(i):
    with urllib.request.urlopen(ETCD[i] + "/metrics", timeout=3) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("mast_nacos_grpc_connections "):
                return float(line.split()[1])
    return 0.0


async def until(check, what):
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        try:
            if await check():
                return
        except Exception:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out: " + what)
        await asyncio.sleep(0.2)


def config(tmp):
    return (ClientConfigBuilder().server_address(",".join(NACOS)).namespace_id("dev")
            .log_dir(tmp).cache_dir(tmp).log_level("ERROR")
            .grpc_config(GRPCConfig(grpc_timeout=3000)).build())


async def main():
    with tempfile.TemporaryDirectory() as tmp:
        naming = await NacosNamingService.create_naming_service(config(tmp))
        assert await naming.register_instance(RegisterInstanceParam(
            service_name="fo", group_name="G", ip="10.7.0.1", port=80, weight=1.0,
            cluster_name="DEFAULT", metadata={}, enabled=True, healthy=True, ephemeral=True))
        holders = [i for i in range(len(NACOS)) if connections(i) > 0]
        assert len(holders) == 1, holders
        victim = holders[0]
        cfg = await NacosConfigService.create_config_service(config(tmp))
        await cfg.publish_config(ConfigParam(data_id="fo.txt", group="G", content="v1"))
        seen = []

        async def listener(tenant, data_id, group, content):
            seen.append(content)

        await cfg.add_listener("fo.txt", "G", listener)
        before = etcd("/v3/kv/range", {"key": b64(KEY)}, set())["kvs"][0]["lease"]

        os.kill(PIDS[victim], signal.SIGKILL)
        dead = {victim}

        async def registered_again():
            kvs = etcd("/v3/kv/range", {"key": b64(KEY)}, dead).get("kvs", [])
            return kvs and kvs[0].get("lease") not in (None, before)
        await until(registered_again, "the instance registered again through another member")

        async def old_lease_gone():
            r = etcd("/v3/lease/timetolive", {"ID": before}, dead)
            return int(r.get("TTL", -1)) == -1
        await until(old_lease_gone, "the dead member's lease expired")
        kvs = etcd("/v3/kv/range", {"key": b64(KEY)}, dead).get("kvs", [])
        assert kvs, "the instance outlives the dead member's lease"
        hosts = await naming.list_instances(ListInstanceParam(service_name="fo", group_name="G",
                                                              healthy_only=None))
        assert [h.ip for h in hosts] == ["10.7.0.1"], hosts

        etcd("/v3/kv/put", {"key": b64("/configs/dev/G/fo.txt"), "value": b64("v2")}, dead)

        async def got_v2():
            return "v2" in seen
        await until(got_v2, "the config listener gets a change after the failover")
        await cfg.shutdown()
        try:
            await naming.shutdown()
        except TypeError:  # nacos-sdk-python 2.0.11's shutdown bug (see nacos_grpc.py)
            pass
    print("ok")


asyncio.run(asyncio.wait_for(main(), 240))
