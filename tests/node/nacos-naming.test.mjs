// Nacos naming through the npm `nacos-naming` client, unchanged, against `mast serve`'s Nacos
// HTTP API: register, list, subscribe (UDP push), deregister, and ephemeral instances that go
// when the process beating for them dies; and the same instances seen through etcd (the seeds'
// `/services/<service>/` prefix read) and the other way round.
//
// Mast only (etcd has no Nacos API): skipped unless MAST_BIN is set.
//
//   cd tests/node && MAST_BIN=../../target/debug/mast node --test nacos-naming.test.mjs

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Etcd3 } from 'etcd3';
import { NacosNamingClient } from 'nacos-naming';
import { freePort, startServer, waitFor, withTimeout } from './harness.mjs';

const MAST = Boolean(process.env.MAST_BIN);
const TEST_TIMEOUT_MS = 40_000;
const EVENT_WAIT_MS = 15_000;
const quiet = { info() {}, warn() {}, error() {}, debug() {} };

let server;
let nacosAddr;
let etcd;
const clients = [];
const children = new Set();

before(async () => {
  if (!MAST) return;
  nacosAddr = `127.0.0.1:${await freePort()}`;
  server = await startServer({ args: ['--nacos-addr', nacosAddr] });
  etcd = new Etcd3(server.clientOptions);
  await waitFor(
    async () => (await fetch(`http://${nacosAddr}/nacos/v1/ns/operator/metrics`)).status === 200,
    10_000,
    `Nacos API on ${nacosAddr}`,
  );
});

after(async () => {
  for (const child of children) child.kill('SIGKILL');
  for (const c of clients) await c.close();
  etcd?.close();
  await server?.stop();
});

async function namingClient() {
  const c = new NacosNamingClient({ logger: quiet, serverList: nacosAddr, namespace: 'public' });
  await withTimeout(c.ready(), 10_000, 'nacos-naming ready');
  clients.push(c);
  return c;
}

const addrs = hosts => hosts.map(h => `${h.ip}:${h.port}`).sort();

test('register two, list them, a subscriber sees a third arrive and one leave', { skip: !MAST, timeout: TEST_TIMEOUT_MS }, async () => {
  const a = await namingClient();
  const b = await namingClient();
  await a.registerInstance('orders', { ip: '10.0.0.1', port: 8080 });
  await a.registerInstance('orders', { ip: '10.0.0.2', port: 8080, weight: 2, metadata: { zone: 'eu' } });
  const hosts = await b.getAllInstances('orders', 'DEFAULT_GROUP', '', false);
  assert.deepEqual(addrs(hosts), ['10.0.0.1:8080', '10.0.0.2:8080']);
  const h2 = hosts.find(h => h.ip === '10.0.0.2');
  assert.equal(h2.weight, 2);
  assert.equal(h2.metadata.zone, 'eu');
  assert.equal(h2.instanceId, '10.0.0.2#8080#DEFAULT#DEFAULT_GROUP@@orders');
  assert.equal(h2.healthy, true);

  // The seeds' discovery sees them: a prefix read of /services/orders/.
  const kvs = await etcd.getAll().prefix('/services/orders/').json();
  assert.deepEqual(Object.values(kvs).map(v => `${v.host}:${v.port}`).sort(), ['10.0.0.1:8080', '10.0.0.2:8080']);

  const seen = [];
  b.subscribe('orders', list => seen.push(addrs(list)));
  await waitFor(() => seen.some(l => l.length === 2), EVENT_WAIT_MS, 'the subscriber gets the two');
  await a.registerInstance('orders', { ip: '10.0.0.3', port: 8080 });
  await waitFor(() => seen.some(l => l.includes('10.0.0.3:8080')), EVENT_WAIT_MS, 'a third arrives');
  await a.deregisterInstance('orders', { ip: '10.0.0.1', port: 8080 });
  await waitFor(
    () => seen.some(l => l.join() === '10.0.0.2:8080,10.0.0.3:8080'),
    EVENT_WAIT_MS,
    'one leaves',
  );
});

test('an instance the seeds register with etcd is a Nacos instance', { skip: !MAST, timeout: TEST_TIMEOUT_MS }, async () => {
  // The seeds' registerService: a lease and a put of {host, port} under /services/<name>/.
  const lease = etcd.lease(10, { autoKeepAlive: false });
  await lease.put('/services/user-service/u1').value(JSON.stringify({ host: '127.0.0.1', port: 3001 }));
  try {
    const c = await namingClient();
    const hosts = await c.getAllInstances('user-service', 'DEFAULT_GROUP', '', false);
    assert.equal(hosts.length, 1);
    assert.deepEqual(
      [hosts[0].ip, hosts[0].port, hosts[0].ephemeral, hosts[0].healthy, hosts[0].clusterName],
      ['127.0.0.1', 3001, true, true, 'DEFAULT'],
    );
  } finally {
    await lease.revoke();
  }
});

test('the instances of a process killed with SIGKILL disappear, and the subscriber sees it', { skip: !MAST, timeout: TEST_TIMEOUT_MS }, async () => {
  const watcher = await namingClient();
  // One instance outlives the child: the client ignores an empty list (its push-empty
  // protection), so the subscriber is shown the list shrinking to it.
  await watcher.registerInstance('pay', { ip: '10.1.0.9', port: 9000 }, 'PAY');
  const seen = [];
  watcher.subscribe({ serviceName: 'pay', groupName: 'PAY' }, list => seen.push(addrs(list)));
  const child = spawn(process.execPath, [
    fileURLToPath(new URL('./nacos-register-child.mjs', import.meta.url)),
    nacosAddr, 'PAY', 'pay', '10.1.0.1:9000', '10.1.0.2:9000',
  ], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(child);
  const registered = new Promise((resolve, reject) => {
    child.stdout.on('data', d => d.toString().includes('registered') && resolve());
    child.once('exit', code => reject(new Error(`child exited ${code} before registering`)));
  });
  await withTimeout(registered, 15_000, 'the child registers');
  const hosts = await watcher.getAllInstances('pay', 'PAY', '', false);
  assert.deepEqual(addrs(hosts), ['10.1.0.1:9000', '10.1.0.2:9000', '10.1.0.9:9000']);
  // In a group: under /services/PAY@@pay/ for etcd clients.
  assert.equal((await etcd.getAll().prefix('/services/PAY@@pay/').keys()).length, 3);

  process.kill(child.pid, 'SIGKILL');
  children.delete(child);
  await waitFor(
    () => seen.length > 0 && seen[seen.length - 1].join() === '10.1.0.9:9000',
    EVENT_WAIT_MS,
    'the dead process\'s instances leave the subscriber\'s list',
  );
  assert.deepEqual(await etcd.getAll().prefix('/services/PAY@@pay/').keys(), ['/services/PAY@@pay/10.1.0.9#9000#DEFAULT']);
});
