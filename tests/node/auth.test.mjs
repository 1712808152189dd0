// The seeds' flows with the seeds' own client options, `auth: { username: 'root',
// password: 'guang' }`, against a server with auth on: Mast started with
// MAST_ROOT_PASSWORD=guang, or a real etcd 3.4 on which the harness runs what the
// seeds' container does (`etcdctl user add root:guang`, `etcdctl auth enable`).
//
// Then what a client sees when auth goes wrong, as raised by the etcd3 package:
//  - wrong password / unknown user: EtcdAuthenticationFailedError;
//  - no `auth` option: GRPCInvalidArgumentError "etcdserver: user name is empty";
//  - a user with readwrite on '/services/app/' only: EtcdPermissionDeniedError elsewhere.
// Every expected message is etcd 3.4's, observed with this file.
//
// What differs from the seeds: as in seeds.test.mjs (console.log becomes a recorded
// event list, shorter TTLs, bounded waits instead of fixed sleeps, cleanup of watchers,
// leases and clients). Seed 003 itself uses password 'root'; here every seed uses
// 'guang', the password of seeds 001/002 and of the container they run.
//
//   cd tests/node && node --test auth.test.mjs                           # real etcd 3.4
//   cd tests/node && MAST_BIN=../../target/debug/mast node --test auth.test.mjs

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  Etcd3,
  EtcdAuthenticationFailedError,
  EtcdError,
  EtcdLeaseInvalidError,
  EtcdPermissionDeniedError,
  GRPCInvalidArgumentError,
} from 'etcd3';
import { onceWithin, startServer, waitFor, withTimeout } from './harness.mjs';

const TEST_TIMEOUT_MS = 20_000;
const EVENT_WAIT_MS = 10_000;
const CALL_MS = 5_000; // bound on one client call

// The exact errors etcd 3.4 gives the etcd3 package (class + message).
const AUTH_FAILED = '3 INVALID_ARGUMENT: etcdserver: authentication failed, invalid user ID or password';
const USER_EMPTY = '3 INVALID_ARGUMENT: etcdserver: user name is empty';
const PERMISSION_DENIED = '7 PERMISSION_DENIED: etcdserver: permission denied';
const WATCH_USER_EMPTY = 'Watcher canceled: rpc error: code = InvalidArgument desc = etcdserver: user name is empty';
const WATCH_PERMISSION_DENIED =
  'Watcher canceled: rpc error: code = PermissionDenied desc = etcdserver: permission denied';

let server;

before(async () => {
  server = await startServer({ rootPassword: 'guang' });
});

after(async () => {
  await server?.stop();
  // Last resort, as in seeds.test.mjs: a leaked handle cannot keep this file running.
  setTimeout(() => {
    process.stderr.write('auth.test.mjs: handles still open 5 s after the last test; exiting\n');
    process.exit(process.exitCode ?? 0);
  }, 5_000).unref();
});

/** The seeds' client options (seed 002; seeds 001/003 add only dialTimeout). */
function seedOptions() {
  return {
    hosts: server.url,
    auth: {
      username: 'root',
      password: 'guang',
    },
  };
}

/** Per-test resources, cleaned up as in seeds.test.mjs. */
function scope(t) {
  const clients = [];
  const watchers = [];
  const leases = [];
  t.after(async () => {
    for (const w of watchers) {
      await withTimeout(w.cancel(), 3_000, 'watcher.cancel()').catch(() => {});
    }
    for (const l of leases) {
      await withTimeout(l.revoke(), 3_000, 'lease.revoke()').catch(() => {});
      l.release();
    }
    for (const c of clients) c.close();
  });
  return {
    /** A client with the seeds' options, or `options` instead. */
    client(options = seedOptions()) {
      const c = new Etcd3(options);
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

/** Asserts that `promise` rejects with exactly this etcd3 error class and message. */
async function rejectsWith(promise, cls, message, what) {
  await assert.rejects(withTimeout(promise, CALL_MS, what), err => {
    assert.equal(err.constructor.name, cls.name, `${what}: ${err.constructor.name}: ${err.message}`);
    assert.ok(err instanceof cls);
    assert.equal(err.message, message, what);
    return true;
  });
}

// ---------------------------------------------------------------------------
// The seeds' flows as root.

// a. seed 001 (Nest controller with the ETCD_CLIENT provider): put / get / del 'aaa'
test('a. root: seed 001 put, get, delete', { timeout: TEST_TIMEOUT_MS }, async t => {
  const etcdClient = scope(t).client();
  await etcdClient.put('aaa').value('hello');
  assert.equal(await etcdClient.get('aaa').string(), 'hello');
  await etcdClient.delete().key('aaa');
  assert.equal(await etcdClient.get('aaa').string(), null);
});

// b. seed 002: config center
test('b. root: saveConfig / getConfig / deleteConfig', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const { saveConfig, getConfig, deleteConfig } = seed002(s.client(), s);
  await saveConfig('config-key', 'config-value');
  assert.equal(await getConfig('config-key'), 'config-value');
  await deleteConfig('config-key');
  assert.equal(await getConfig('config-key'), null);
});

// d. seed 002 main(): register, discover, watch; a third instance appears and
// instance_2 is deleted from another root client.
test('d. root: registerService / discoverService / watchService', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const seed = seed002(s.client(), s);
  const other = s.client();
  const seedOther = seed002(other, s);
  const serviceName = 'my_service';

  await seed.registerService(serviceName, 'instance_1', { host: 'localhost', port: 3000 });
  await seed.registerService(serviceName, 'instance_2', { host: 'localhost', port: 3002 });
  assert.deepEqual(ports(await seed.discoverService(serviceName)), [3000, 3002]);

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
  assert.deepEqual(seed.events, [
    ['put', `/services/${serviceName}/instance_3`],
    ['delete', `/services/${serviceName}/instance_2`],
  ]);
});

// e. The automatic keepalive (a LeaseKeepAlive stream opened with the token) keeps a
// lease key alive past its TTL.
test('e. root: automatic keepalive keeps a lease key', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const client = s.client();
  const lease = s.lease(client.lease(3));
  const answers = [];
  lease.on('keepaliveSucceeded', res => answers.push(res.TTL));
  const lost = [];
  lease.on('lost', err => lost.push(err));
  await lease.put('keepalive/key').value('alive');
  await sleep(4_000);
  assert.equal(await client.get('keepalive/key').string(), 'alive');
  assert.deepEqual(lost, []);
  assert.ok(answers.length >= 2, `keepalive answers: ${answers.length}`);
  assert.ok(answers.every(ttl => ttl === '3'), `keepalive TTLs: ${answers}`);
});

// f2. seed 002's registerService: a lease revoked by another root client is lost
// (keepalive answers TTL 0) and the 'lost' handler registers again.
test('f2. root: registerService re-registers after its lease is lost', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const seed = seed002(s.client(), s);
  const b = s.client();
  const key = '/services/lost_service/instance_1';
  await seed.registerService('lost_service', 'instance_1', { host: 'localhost', port: 3000 });
  const oldLease = (await b.get(key).exec()).kvs[0].lease;
  assert.notEqual(oldLease, '0');

  await b.leaseClient.leaseRevoke({ ID: oldLease });
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
  await assert.rejects(b.leaseClient.leaseRevoke({ ID: oldLease }), EtcdLeaseInvalidError);
});

// g. seed 003 §3.4: lease without keepalive expires; the watcher sees the delete.
test('g. root: seed 003 lease expires, watcher sees delete', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const client = s.client({ ...seedOptions(), dialTimeout: 5000 });
  const lease = s.lease(client.lease(3, { autoKeepAlive: false }));
  const started = Date.now();
  await lease.put('service/foo').value('temporary_value');
  const watcher = s.watcher(await client.watch().key('service/foo').create());
  const seen = [];
  watcher
    .on('put', response => seen.push(['put', response.value.toString()]))
    .on('delete', kv => seen.push(['delete', kv.key.toString()]));
  await waitFor(() => seen.length > 0, EVENT_WAIT_MS, "watcher 'delete' on lease expiry");
  assert.deepEqual(seen, [['delete', 'service/foo']]);
  assert.ok(Date.now() - started >= 2_500, `expired too early: ${Date.now() - started} ms`);
  assert.equal(await client.get('service/foo').string(), null);
});

// h + i. seed 003 §3.3 and §3.5: watch a key; service discovery with one key per service.
test('i. root: seed 003 watch, register, re-register, revoke', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const client = s.client({ ...seedOptions(), dialTimeout: 5000 });

  const fooSeen = [];
  const fooWatcher = s.watcher(await client.watch().key('foo').create());
  fooWatcher.on('put', res => fooSeen.push(['put', res.value.toString()]));
  fooWatcher.on('delete', () => fooSeen.push(['delete']));
  await client.put('foo').value('new_value');
  await client.delete().key('foo');
  await waitFor(() => fooSeen.length >= 2, EVENT_WAIT_MS, 'foo: put and delete events');
  assert.deepEqual(fooSeen, [['put', 'new_value'], ['delete']]);

  async function registerService(serviceName, serviceAddress, ttl = 10) {
    const lease = s.lease(client.lease(ttl));
    await lease.put(`services/${serviceName}`).value(serviceAddress);
    return lease;
  }
  async function discoverService(serviceName) {
    return await client.get(`services/${serviceName}`).string();
  }
  const seen = [];
  const watcher = s.watcher(await client.watch().key('services/myapp').create());
  watcher.on('put', r => seen.push(['put', r.value.toString()])).on('delete', () => seen.push(['delete']));

  const serviceLease = await registerService('myapp', 'http://localhost:3000');
  assert.equal(await discoverService('myapp'), 'http://localhost:3000');
  const secondLease = await registerService('myapp', 'http://localhost:3001');
  await waitFor(() => seen.length >= 2, EVENT_WAIT_MS, 'two puts');
  assert.equal(await discoverService('myapp'), 'http://localhost:3001');
  await serviceLease.revoke(); // the key moved to the second lease: nothing deleted
  await secondLease.revoke(); // service offline
  await waitFor(() => seen.length >= 3, EVENT_WAIT_MS, 'delete after revoke');
  assert.deepEqual(seen, [['put', 'http://localhost:3000'], ['put', 'http://localhost:3001'], ['delete']]);
  assert.equal(await discoverService('myapp'), null);
});

// ---------------------------------------------------------------------------
// Clients that are not root.

// n. The seeds' code without the `auth` option (seed 000 does `new Etcd3()`).
test('n. no auth option: "user name is empty"', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const root = s.client();
  await root.put('/config/db').value('secret');
  const client = s.client({ hosts: server.url });

  await rejectsWith(client.get('/config/db').string(), GRPCInvalidArgumentError, USER_EMPTY, 'get');
  await rejectsWith(client.put('/config/db').value('x'), GRPCInvalidArgumentError, USER_EMPTY, 'put');
  await rejectsWith(client.delete().key('/config/db'), GRPCInvalidArgumentError, USER_EMPTY, 'delete');
  await rejectsWith(client.getAll().prefix('/services').strings(), GRPCInvalidArgumentError, USER_EMPTY, 'getAll');
  // A watch is created, then canceled with the reason; etcd3 casts it to a plain EtcdError.
  await rejectsWith(client.watch().prefix('/services').create(), EtcdError, WATCH_USER_EMPTY, 'watch');
  // etcd 3.4 grants a lease without a user (LeaseGrant is not checked); the put with it is.
  const lease = s.lease(client.lease(5, { autoKeepAlive: false }));
  await rejectsWith(lease.put('/services/x/1').value('v'), GRPCInvalidArgumentError, USER_EMPTY, 'lease put');
  assert.match(await withTimeout(lease.grant(), CALL_MS, 'lease grant'), /^\d+$/);
  assert.equal(await root.get('/config/db').string(), 'secret');
  await root.delete().key('/config/db');
});

// p. A user made by root with the etcd3 role/user API, readwrite on '/services/app/'.
test('p. user with readwrite on /services/app/: allowed there, denied elsewhere', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const root = s.client();
  const role = await root.role('app').create();
  await role.grant({ permission: 'Readwrite', range: root.range({ prefix: '/services/app/' }) });
  const user = await root.user('app').create('pw');
  await user.addRole('app');
  assert.deepEqual((await root.user('app').roles()).map(r => r.name), ['app']);
  const [perm] = await root.role('app').permissions();
  assert.equal(perm.permission, 'Readwrite');
  assert.equal(perm.range.start.toString(), '/services/app/');
  assert.equal(perm.range.end.toString(), '/services/app0');
  await root.put('/config/db').value('secret');

  const appOptions = { hosts: server.url, auth: { username: 'app', password: 'pw' } };
  const app = s.client(appOptions);
  const seed = seed002(app, s);

  // Its own prefix: the seed's registerService (lease + put) and a watch on '/services/app/'.
  const watcher = s.watcher(await app.watch().prefix('/services/app/').create());
  const seen = [];
  watcher.on('put', kv => seen.push(['put', kv.key.toString()])).on('delete', kv => seen.push(['delete', kv.key.toString()]));
  await seed.registerService('app', 'instance_1', { host: 'localhost', port: 3000 });
  await root.put('/services/app/instance_2').value(JSON.stringify({ host: 'localhost', port: 3002 }));
  await app.delete().key('/services/app/instance_2');
  await waitFor(() => seen.length >= 3, EVENT_WAIT_MS, 'app watcher: put, put, delete');
  assert.deepEqual(seen, [
    ['put', '/services/app/instance_1'],
    ['put', '/services/app/instance_2'],
    ['delete', '/services/app/instance_2'],
  ]);
  assert.deepEqual(await app.getAll().prefix('/services/app/').strings(), {
    '/services/app/instance_1': JSON.stringify({ host: 'localhost', port: 3000 }),
  });
  assert.equal(await root.get('/services/app/instance_1').string(), JSON.stringify({ host: 'localhost', port: 3000 }));

  // The seed's own discoverService('app') asks for prefix '/services/app' (no trailing
  // slash), a wider range than the grant: denied. (watchService('app') too, below.)
  await rejectsWith(seed.discoverService('app'), EtcdPermissionDeniedError, PERMISSION_DENIED, "discoverService('app')");

  // Elsewhere: denied.
  await rejectsWith(app.put('/services/other/instance_1').value('x'), EtcdPermissionDeniedError, PERMISSION_DENIED, 'put outside');
  await rejectsWith(app.get('/config/db').string(), EtcdPermissionDeniedError, PERMISSION_DENIED, 'get outside');
  await rejectsWith(app.delete().key('/config/db'), EtcdPermissionDeniedError, PERMISSION_DENIED, 'delete outside');
  await rejectsWith(
    seed.registerService('other', 'instance_1', { host: 'localhost', port: 4000 }),
    EtcdPermissionDeniedError,
    PERMISSION_DENIED,
    "registerService('other')",
  );
  await rejectsWith(app.getUsers(), EtcdPermissionDeniedError, PERMISSION_DENIED, 'user list');
  await rejectsWith(app.role('x').create(), EtcdPermissionDeniedError, PERMISSION_DENIED, 'role add');
  // A refused watch goes on a client of its own: the etcd3 package does not create
  // further watchers on a stream after a refused one.
  const app2 = s.client(appOptions);
  await rejectsWith(
    app2.watch().prefix('/services/other/').create(),
    EtcdPermissionDeniedError,
    WATCH_PERMISSION_DENIED,
    'watch outside',
  );
  // Likewise the seed's own watchService('app'): prefix '/services/app'.
  const seed3 = seed002(s.client(appOptions), s);
  await rejectsWith(
    seed3.watchService('app', () => {}),
    EtcdPermissionDeniedError,
    WATCH_PERMISSION_DENIED,
    "watchService('app')",
  );
  assert.equal(await root.get('/config/db').string(), 'secret');
  assert.equal(await root.get('/services/other/instance_1').string(), null);
  await root.delete().key('/config/db');
});

// v. Repeated wrong passwords for root. etcd 3.4 has no login throttle. Mast, by design,
// spaces further attempts of a user from one address after three failures (0.5 s doubling,
// up to 30 s; see README), so guessing is slow; the right password still works, after at
// most the current gap, and a success clears the record. (Runs before w, which starts fresh.)
test('v. repeated wrong passwords are slowed, the right one still works', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const took = [];
  for (let i = 0; i < 5; i++) {
    const wrong = s.client({ hosts: server.url, auth: { username: 'root', password: `wrong-${i}` } });
    const started = Date.now();
    await rejectsWith(wrong.get('aaa').string(), EtcdAuthenticationFailedError, AUTH_FAILED, `wrong password #${i + 1}`);
    took.push(Date.now() - started);
  }
  if (server.kind === 'mast') {
    assert.ok(took[4] >= 400, `the 5th wrong attempt should be slowed, took ${took[4]} ms (all: ${took})`);
  }
  const started = Date.now();
  await withTimeout(s.client().get('aaa').string(), 2 * CALL_MS, 'root get after 5 failures');
  const rootTook = Date.now() - started;
  assert.ok(rootTook < 5_000, `root login after 5 failed logins took ${rootTook} ms`);
  // After that success, logins are fast again.
  const again = Date.now();
  await withTimeout(s.client().get('aaa').string(), CALL_MS, 'root get after a success');
  assert.ok(Date.now() - again < 1_500, `root login after a success took ${Date.now() - again} ms`);
});

// w. Wrong password, unknown user: EtcdAuthenticationFailedError on every call, and the
// right password still works right after. A watch with a wrong password never settles:
// the etcd3 package keeps retrying and only emits 'disconnected' with the error.
test('w. wrong password and unknown user: authentication failed', { timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const wrong = s.client({ hosts: server.url, auth: { username: 'root', password: 'wrong' } });
  await rejectsWith(wrong.get('aaa').string(), EtcdAuthenticationFailedError, AUTH_FAILED, 'get, wrong password');
  await rejectsWith(wrong.put('aaa').value('x'), EtcdAuthenticationFailedError, AUTH_FAILED, 'put, wrong password');

  const started = Date.now();
  assert.equal(await withTimeout(s.client().get('aaa').string(), CALL_MS, 'root get after 2 failures'), null);
  assert.ok(Date.now() - started < 2_000, `root login took ${Date.now() - started} ms`);

  const nobody = s.client({ hosts: server.url, auth: { username: 'nobody', password: 'guang' } });
  await rejectsWith(nobody.get('aaa').string(), EtcdAuthenticationFailedError, AUTH_FAILED, 'get, unknown user');

  const wrongWatch = s.client({ hosts: server.url, auth: { username: 'root', password: 'wrong' } });
  const watcher = s.watcher(wrongWatch.watch().prefix('/services/my_service').watcher());
  const [err] = await onceWithin(watcher, 'disconnected', EVENT_WAIT_MS);
  assert.ok(err instanceof EtcdAuthenticationFailedError, `disconnected with ${err}`);
  assert.equal(err.message, AUTH_FAILED);
});
