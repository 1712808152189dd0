// The flows of the user's seed tutorials (/work/shared/seeds/*.txt), run with the
// `etcd3` npm package against a server this file starts itself: Mast when MAST_BIN
// is set, otherwise a real etcd (ETCD_BIN, default /usr/bin/etcd).
//
// The client calls are the seeds' own. What differs from the seeds:
//  - no `auth` option (the server runs without auth; the seeds' root/guang is a
//    docker-image default, not part of the flows);
//  - console.log becomes a recorded event list, so the test can assert on it;
//  - watchers and leases are remembered so each test can cancel/revoke them and
//    close its clients (a closed etcd3 client does not stop its lease timers);
//  - fixed sleeps (setTimeout 5 s / 6 s / 15 s) become bounded waits for the event.
//
//   cd tests/node && node --test                                   # real etcd 3.4
//   cd tests/node && MAST_BIN=../../target/debug/mast node --test  # Mast
//   cd tests/node && MAST_BIN=… NODE_TEST_MEMBERS=3 node --test seeds.test.mjs  # 3 members

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { Etcd3, EtcdLeaseInvalidError } from 'etcd3';
import { onceWithin, startCluster, startServer, waitFor, withTimeout } from './harness.mjs';

const TEST_TIMEOUT_MS = 20_000; // the slowest test takes ~5 s against etcd
const EVENT_WAIT_MS = 10_000;

let server;

// NODE_TEST_MEMBERS=3: the same flows against a 3-member cluster, the clients given every
// member's endpoint (etcd3 spreads its calls over them).
const MEMBERS = Number(process.env.NODE_TEST_MEMBERS || 1);

before(async () => {
  server = MEMBERS > 1 ? await startCluster(MEMBERS) : await startServer();
});

after(async () => {
  await server?.stop();
  // Last resort, so a handle a failed test leaked (a lease timer, a watch
  // reconnect loop) cannot keep this file running: unref'd, it fires only if
  // something else still holds the event loop 5 s after the server stopped.
  setTimeout(() => {
    process.stderr.write('seeds.test.mjs: handles still open 5 s after the last test; exiting\n');
    process.exit(process.exitCode ?? 0); // failures have set exitCode by now
  }, 5_000).unref();
});

/**
 * Per-test resources. Cleanup order: cancel watchers, revoke leases (revoke()
 * first marks the lease closed, so the seeds' `lost` handlers do not fire), close
 * clients. Every step is bounded; failures during cleanup are ignored.
 */
function scope(t) {
  const clients = [];
  const watchers = [];
  const leases = [];
  t.after(async () => {
    for (const w of watchers) {
      await withTimeout(w.cancel(), 3_000, 'watcher.cancel()').catch(() => {});
    }
    // for..of sees leases pushed while we iterate (a re-registration in flight).
    for (const l of leases) {
      await withTimeout(l.revoke(), 3_000, 'lease.revoke()').catch(() => {});
      l.release();
    }
    for (const c of clients) c.close();
  });
  return {
    client() {
      const c = new Etcd3({ hosts: server.hosts ?? server.url });
      clients.push(c);
      return c;
    },
    watcher(w) {
      watchers.push(w);
      return w;
    },
    lease(l) {
      leases.push(l);
      return l;
    },
  };
}

/** Seed 001/002's helpers (config center + registry), bound to one client. */
function seed002(client, track) {
  const events = [];

  // 保存配置
  async function saveConfig(key, value) {
    await client.put(key).value(value);
  }

  // 读取配置
  async function getConfig(key) {
    return await client.get(key).string();
  }

  // 删除配置
  async function deleteConfig(key) {
    await client.delete().key(key);
  }

  // 服务注册
  async function registerService(serviceName, instanceId, metadata) {
    const key = `/services/${serviceName}/${instanceId}`;
    const lease = track.lease(client.lease(10));
    await lease.put(key).value(JSON.stringify(metadata));
    lease.on('lost', async () => {
      events.push(['lost', key]); // 租约过期，重新注册...
      await registerService(serviceName, instanceId, metadata);
    });
  }

  // 服务发现
  async function discoverService(serviceName) {
    const instances = await client.getAll().prefix(`/services/${serviceName}`).strings();
    return Object.entries(instances).map(([key, value]) => JSON.parse(value));
  }

  // 监听服务变更 (returns the watcher so the test can cancel it)
  async function watchService(serviceName, callback) {
    const watcher = track.watcher(await client.watch().prefix(`/services/${serviceName}`).create());
    watcher
      .on('put', async event => {
        events.push(['put', event.key.toString()]); // 新的服务节点添加
        callback(await discoverService(serviceName));
      })
      .on('delete', async event => {
        events.push(['delete', event.key.toString()]); // 服务节点删除
        callback(await discoverService(serviceName));
      });
    return watcher;
  }

  return { events, saveConfig, getConfig, deleteConfig, registerService, discoverService, watchService };
}

const ports = instances => instances.map(i => i.port).sort((a, b) => a - b);
const has = (events, type, key) => events.some(([ty, k]) => ty === type && k === key);

// a. seed 001 (Nest controller): put / get / del of key 'aaa'
test('a. put, get, delete a key', { timeout: TEST_TIMEOUT_MS }, async t => {
  const client = scope(t).client();
  await client.put('aaa').value('hello');
  assert.equal(await client.get('aaa').string(), 'hello');
  await client.put('aaa').value('world');
  assert.equal(await client.get('aaa').string(), 'world');
  await client.delete().key('aaa');
  assert.equal(await client.get('aaa').string(), null);
});

// b. seed 002: config center helpers
test('b. saveConfig / getConfig / deleteConfig', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const { saveConfig, getConfig, deleteConfig } = seed002(s.client(), s);
  await saveConfig('config-key', 'config-value');
  assert.equal(await getConfig('config-key'), 'config-value');
  await deleteConfig('config-key');
  assert.equal(await getConfig('config-key'), null);
});

// c. seed 002: etcdctl put /services/a, /services/b; getAll().prefix('/services')
test('c. getAll().prefix(...) strings() and keys()', { timeout: TEST_TIMEOUT_MS }, async t => {
  const client = scope(t).client();
  await client.put('/services/a').value('xxxx');
  await client.put('/services/b').value('yyyy');
  await client.put('/servicesX').value('outside'); // sorts after the prefix range's end
  await client.put('/other/a').value('outside');
  try {
    assert.equal(await client.get('/services/a').string(), 'xxxx');
    assert.deepEqual(await client.getAll().prefix('/services').strings(), {
      '/services/a': 'xxxx',
      '/services/b': 'yyyy',
      '/servicesX': 'outside', // a plain string prefix: '/services' also matches '/servicesX'
    });
    assert.deepEqual(await client.getAll().prefix('/services/').keys(), ['/services/a', '/services/b']);
    assert.deepEqual(await client.getAll().prefix('/services/').strings(), {
      '/services/a': 'xxxx',
      '/services/b': 'yyyy',
    });
  } finally {
    await client.delete().prefix('/services');
    await client.delete().key('/other/a');
  }
  assert.deepEqual(await client.getAll().prefix('/services').keys(), []);
});

// d. seed 002 main(): register two instances, discover, watch; a third instance
// appears and instance_2 is deleted from another client (etcdctl del in the seed).
test('d. registerService / discoverService / watchService', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const seed = seed002(s.client(), s);
  const other = s.client();
  const seedOther = seed002(other, s);
  const serviceName = 'my_service';

  await seed.registerService(serviceName, 'instance_1', { host: 'localhost', port: 3000 });
  await seed.registerService(serviceName, 'instance_2', { host: 'localhost', port: 3002 });

  const instances = await seed.discoverService(serviceName);
  assert.deepEqual(ports(instances), [3000, 3002]);
  assert.deepEqual(instances[0], { host: 'localhost', port: 3000 });

  const updates = [];
  await seed.watchService(serviceName, updatedInstances => updates.push(updatedInstances));

  await seedOther.registerService(serviceName, 'instance_3', { host: 'localhost', port: 3004 });
  await other.delete().key(`/services/${serviceName}/instance_2`);

  await waitFor(
    () =>
      has(seed.events, 'put', `/services/${serviceName}/instance_3`) &&
      has(seed.events, 'delete', `/services/${serviceName}/instance_2`),
    EVENT_WAIT_MS,
    'watcher saw put instance_3 and delete instance_2',
  );
  await waitFor(
    () => updates.some(list => ports(list).join() === '3000,3004'),
    EVENT_WAIT_MS,
    'callback got [instance_1, instance_3]',
  );
  assert.deepEqual(ports(await seed.discoverService(serviceName)), [3000, 3004]);
  // Only the two changes above: no extra events (e.g. none from keepalives).
  assert.deepEqual(seed.events, [
    ['put', `/services/${serviceName}/instance_3`],
    ['delete', `/services/${serviceName}/instance_2`],
  ]);
});

// e. The client's automatic keepalive keeps a lease key alive past its TTL.
// The seeds use lease(10) (and wait > 10 s); lease(3) observed for 5 s proves the
// same thing: without keepalives the key would be gone after 3 s.
test('e. automatic keepalive keeps a lease key', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const client = s.client();
  const lease = s.lease(client.lease(3));
  const answers = [];
  lease.on('keepaliveSucceeded', res => answers.push(res.TTL));
  const lost = [];
  lease.on('lost', err => lost.push(err));
  await lease.put('keepalive/key').value('alive');
  const id = await lease.grant();

  await sleep(5_000);

  assert.equal(await client.get('keepalive/key').string(), 'alive');
  assert.deepEqual(lost, []);
  // One keepalive every TTL/3 s: at least 3 in 5 s; each answers the full granted TTL.
  assert.ok(answers.length >= 3, `keepalive answers: ${answers.length}`);
  assert.ok(answers.every(ttl => ttl === '3'), `keepalive TTLs: ${answers}`);
  const ttl = await client.leaseClient.leaseTimeToLive({ ID: id });
  assert.equal(ttl.grantedTTL, '3');
  assert.ok(Number(ttl.TTL) > 0 && Number(ttl.TTL) <= 3, `remaining TTL ${ttl.TTL}`);
});

// f. A lease revoked by someone else: the next keepalive answers TTL 0 and the
// client emits 'lost'; the keys attached to the lease are gone.
test('f. lease revoked by another client emits lost', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const a = s.client();
  const b = s.client();
  const lease = s.lease(a.lease(5));
  const id = await lease.grant();
  assert.equal(typeof id, 'string');
  await lease.put('lost/key').value('v');
  const kv = (await b.get('lost/key').exec()).kvs[0];
  assert.equal(kv.lease, id);

  const lost = onceWithin(lease, 'lost', 15_000);
  const started = Date.now();
  await b.leaseClient.leaseRevoke({ ID: id });
  assert.equal(await b.get('lost/key').string(), null);

  const [err] = await lost;
  assert.ok(err instanceof EtcdLeaseInvalidError, `lost with ${err}`);
  assert.ok(Date.now() - started < 15_000);
  assert.equal(lease.revoked(), true);
  assert.equal(await a.get('lost/key').string(), null);

  // Revoking it again: etcdserver: requested lease not found.
  await assert.rejects(b.leaseClient.leaseRevoke({ ID: id }), EtcdLeaseInvalidError);
  // TimeToLive of the revoked lease: TTL -1, no error.
  assert.equal((await b.leaseClient.leaseTimeToLive({ ID: id })).TTL, '-1');
});

// f2. The same, through seed 002's registerService: its 'lost' handler registers
// the instance again with a new lease.
test('f2. registerService re-registers after its lease is lost', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const seed = seed002(s.client(), s);
  const b = s.client();
  const key = '/services/lost_service/instance_1';
  await seed.registerService('lost_service', 'instance_1', { host: 'localhost', port: 3000 });
  const oldLease = (await b.get(key).exec()).kvs[0].lease;
  assert.notEqual(oldLease, '0');

  await b.leaseClient.leaseRevoke({ ID: oldLease });

  // lease(10): a keepalive every 3.3 s, so 'lost' and the new put come within ~4 s.
  const kv = await waitFor(
    async () => {
      const kvs = (await b.get(key).exec()).kvs;
      return kvs.length === 1 && kvs[0].lease !== oldLease && kvs[0].lease !== '0' && kvs[0];
    },
    15_000,
    're-registered with a new lease',
    200,
  );
  assert.deepEqual(JSON.parse(kv.value.toString()), { host: 'localhost', port: 3000 });
  assert.deepEqual(seed.events, [['lost', key]]);
  assert.deepEqual(await seed.discoverService('lost_service'), [{ host: 'localhost', port: 3000 }]);
});

// g. seed 003 §3.4: a lease without keepalive; the watcher sees the key deleted
// when the lease expires. The seed uses lease(5) and looks after 6 s; lease(3) is
// the same flow (still above etcd's 2 s minimum TTL) and saves 2 s.
test('g. lease without keepalive expires; watcher sees delete', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const client = s.client();
  const lease = s.lease(client.lease(3, { autoKeepAlive: false }));
  const started = Date.now();
  await lease.put('service/foo').value('temporary_value');
  assert.equal(await client.get('service/foo').string(), 'temporary_value');

  const watcher = s.watcher(await client.watch().key('service/foo').create());
  const seen = [];
  watcher
    .on('put', response => seen.push(['put', response.value.toString()]))
    .on('delete', kv => seen.push(['delete', kv.key.toString()]));

  await waitFor(() => seen.length > 0, EVENT_WAIT_MS, "watcher 'delete' on lease expiry");
  const elapsed = Date.now() - started;
  assert.deepEqual(seen, [['delete', 'service/foo']]);
  assert.ok(elapsed >= 2_500, `expired too early: ${elapsed} ms`);
  const value = await client.get('service/foo').string();
  assert.equal(value, null);
});

// h. seed 003 §3.3: watch key 'foo', put 'new_value', delete.
test('h. watch a key: put then delete', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const client = s.client();
  const watcher = s.watcher(await client.watch().key('foo').create());
  const seen = [];
  watcher.on('put', res => seen.push(['put', res.value.toString()]));
  watcher.on('delete', () => seen.push(['delete']));
  await client.put('foo').value('new_value');
  await client.delete().key('foo');
  await waitFor(() => seen.length >= 2, EVENT_WAIT_MS, 'put and delete events');
  assert.deepEqual(seen, [['put', 'new_value'], ['delete']]);
});

// i. seed 003 §3.5: service discovery with one key per service.
test('i. seed 003 service discovery: register, re-register, revoke', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const client = s.client();

  async function registerService(serviceName, serviceAddress, ttl = 10) {
    const lease = s.lease(client.lease(ttl));
    await lease.put(`services/${serviceName}`).value(serviceAddress);
    return lease;
  }
  async function discoverService(serviceName) {
    const value = await client.get(`services/${serviceName}`).string();
    return value;
  }
  const seen = [];
  async function watchService(serviceName) {
    const watcher = s.watcher(await client.watch().key(`services/${serviceName}`).create());
    watcher
      .on('put', response => seen.push(['put', response.value.toString()]))
      .on('delete', () => seen.push(['delete']));
    return watcher;
  }

  const serviceLease = await registerService('myapp', 'http://localhost:3000');
  assert.equal(await discoverService('myapp'), 'http://localhost:3000');
  await watchService('myapp');

  // The seed re-registers after 5 s; no need to wait for that.
  const secondLease = await registerService('myapp', 'http://localhost:3001');
  await waitFor(() => seen.length >= 1, EVENT_WAIT_MS, 'put with the new address');
  assert.deepEqual(seen, [['put', 'http://localhost:3001']]);
  assert.equal(await discoverService('myapp'), 'http://localhost:3001');

  // The seed then revokes the FIRST lease. The second put attached the key to the
  // second lease, so that revoke deletes nothing (as in etcd): the key stays.
  await serviceLease.revoke();
  await sleep(300);
  assert.equal(await discoverService('myapp'), 'http://localhost:3001');
  assert.deepEqual(seen, [['put', 'http://localhost:3001']]);

  // Revoking the lease that holds the key takes the service offline: the watch sees it.
  await secondLease.revoke();
  await waitFor(() => seen.length >= 2, EVENT_WAIT_MS, 'delete after revoke');
  assert.deepEqual(seen, [['put', 'http://localhost:3001'], ['delete']]);
  assert.equal(await discoverService('myapp'), null);
});
