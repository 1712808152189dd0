"""nacos-sdk-python 2.x (its gRPC client, module `v2.nacos`) against `mast serve`, unchanged:
config get / publish / listen, and naming register / list / subscribe, with the same data seen
through etcd's JSON gateway. Run by crates/mast-conformance/tests/nacos_python.rs, which starts
the server; arguments: the Nacos address (host:port) and the etcd client URL. Prints "ok" and
exits 0 when every check holds; any failure raises. Every wait is bounded."""

import asyncio
import base64
import json
import sys
import tempfile
import urllib.request

from v2.nacos import (ClientConfigBuilder, ConfigParam, GRPCConfig, NacosConfigService,
                      NacosNamingService, RegisterInstanceParam, ListInstanceParam,
                      SubscribeServiceParam, DeregisterInstanceParam)

NACOS, ETCD = sys.argv[1], sys.argv[2]
WAIT = 15.0


def etcd_range(prefix):
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = json.dumps({"key": base64.b64encode(prefix.encode()).decode(),
                       "range_end": base64.b64encode(end.encode()).decode()}).encode()
    req = urllib.request.Request(ETCD + "/v3/kv/range", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        kvs = json.load(r).get("kvs", [])
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in kvs}


def etcd_put(key, value):
    body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                       "value": base64.b64encode(value.encode()).decode()}).encode()
    req = urllib.request.Request(ETCD + "/v3/kv/put", data=body, method="POST")
    urllib.request.urlopen(req, timeout=5).read()


async def until(check, what):
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        if await check():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out: " + what)
        await asyncio.sleep(0.05)


def config(tmp):
    return (ClientConfigBuilder().server_address(NACOS).namespace_id("dev")
            .log_dir(tmp).cache_dir(tmp).log_level("ERROR")
            .grpc_config(GRPCConfig(grpc_timeout=5000)).build())


async def configs(tmp):
    svc = await NacosConfigService.create_config_service(config(tmp))
    try:
        ok = await svc.publish_config(ConfigParam(data_id="py.json", group="DEFAULT_GROUP",
                                                  content='{"v":1}', type="json"))
        assert ok, "publish"
        got = await svc.get_config(ConfigParam(data_id="py.json", group="DEFAULT_GROUP"))
        assert got == '{"v":1}', got
        assert etcd_range("/configs/dev/DEFAULT_GROUP/py.json") == \
            {"/configs/dev/DEFAULT_GROUP/py.json": '{"v":1}'}
        seen = []

        async def listener(tenant, data_id, group, content):
            seen.append(content)

        await svc.add_listener("py.json", "DEFAULT_GROUP", listener)
        # A change through etcd, then through the client itself, both reach the listener.
        etcd_put("/configs/dev/DEFAULT_GROUP/py.json", '{"v":2}')

        async def has(v):
            return v in seen
        await until(lambda: has('{"v":2}'), "the listener gets an etcd put")
        await svc.publish_config(ConfigParam(data_id="py.json", group="DEFAULT_GROUP",
                                             content='{"v":3}', type="json"))
        await until(lambda: has('{"v":3}'), "the listener gets a publish")
        # Invalid JSON is refused and nothing changes.
        try:
            refused = not await svc.publish_config(ConfigParam(
                data_id="py.json", group="DEFAULT_GROUP", content='{"v":', type="json"))
        except Exception:
            refused = True
        assert refused, "invalid JSON was accepted"
        got = await svc.get_config(ConfigParam(data_id="py.json", group="DEFAULT_GROUP"))
        assert got == '{"v":3}', got
    finally:
        await svc.shutdown()


async def naming(tmp):
    svc = await NacosNamingService.create_naming_service(config(tmp))
    try:
        for ip in ("10.9.0.1", "10.9.0.2"):
            assert await svc.register_instance(RegisterInstanceParam(
                service_name="py-svc", group_name="G", ip=ip, port=80, weight=1.0,
                cluster_name="DEFAULT", metadata={"lang": "py"}, enabled=True,
                healthy=True, ephemeral=True))
        hosts = await svc.list_instances(ListInstanceParam(service_name="py-svc",
                                                           group_name="G", healthy_only=None))
        assert sorted(h.ip for h in hosts) == ["10.9.0.1", "10.9.0.2"], hosts
        keys = sorted(etcd_range("/services/dev#G@@py-svc/"))
        assert keys == ["/services/dev#G@@py-svc/10.9.0.1#80#DEFAULT",
                        "/services/dev#G@@py-svc/10.9.0.2#80#DEFAULT"], keys
        pushed = []

        async def on_change(instances):
            pushed.append(sorted(i.ip for i in instances))

        await svc.subscribe(SubscribeServiceParam(service_name="py-svc", group_name="G",
                                                  subscribe_callback=on_change))
        assert await svc.deregister_instance(DeregisterInstanceParam(
            service_name="py-svc", group_name="G", ip="10.9.0.1", port=80,
            cluster_name="DEFAULT", ephemeral=True))

        async def shrank():
            return ["10.9.0.2"] in pushed
        await until(shrank, "the subscriber is pushed the smaller list")
    finally:
        try:
            await svc.shutdown()
        except TypeError:
            # nacos-sdk-python 2.0.11's shutdown awaits a non-async stop() after it has
            # closed the connection, which is all that matters here.
            pass

    # The client is gone: its connection's ephemeral instances go with it.
    async def gone():
        return not etcd_range("/services/dev#G@@py-svc/")
    await until(gone, "a closed connection's instances are removed")


async def main():
    with tempfile.TemporaryDirectory() as tmp:
        await asyncio.wait_for(configs(tmp), 60)
        await asyncio.wait_for(naming(tmp), 60)
    print("ok")


asyncio.run(main())
