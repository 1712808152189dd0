// Interop between Mast's HTTP registry/config API (/mast/v1) and the seeds' plain etcd3 flows
// (/work/shared/seeds/002): both see the same keys. Mast only — skipped unless MAST_BIN is set.
//
//   cd tests/node && MAST_BIN=../../target/debug/mast node --test interop.test.mjs

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { Etcd3 } from 'etcd3';
import { startServer, waitFor, withTimeout } from './harness.mjs';

const skip = process.env.MAST_BIN ? false : 'needs MAST_BIN (exercises Mast features)';
const TEST_TIMEOUT_MS = 15_000;
const EVENT_WAIT_MS = 5_000;

let server;

before(async () => {
  if (!skip) server = await startServer();
});

after(async () => {
  await server?.stop();
  setTimeout(() => {
    process.stderr.write('interop.test.mjs: handles still open 5 s after the last test; exiting\n');
    process.exit(process.exitCode ?? 0);
  }, 5_000).unref();
});

/** Per-test clients, watchers and leases, released after the test (bounded). */
function scope(t) {
  const clients = [];
  const watchers = [];
  const leases = [];
  t.after(async () => {
    for (const w of watchers) await withTimeout(w.cancel(), 3_000, 'watcher.cancel()').catch(() => {});
    for (const l of leases) {
      await withTimeout(l.revoke(), 3_000, 'lease.revoke()').catch(() => {});
      l.release();
    }
    for (const c of clients) c.close();
  });
  return {
    client() {
      const c = new Etcd3({ hosts: server.url });
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

/** The seeds' registry helpers (002), bound to one client. */
function seedRegistry(client, track) {
  async function registerService(serviceName, instanceId, metadata) {
    const key = `/services/${serviceName}/${instanceId}`;
    const lease = track.lease(client.lease(10));
    await lease.put(key).value(JSON.stringify(metadata));
    lease.on('lost', async () => {
      await registerService(serviceName, instanceId, metadata);
    });
  }
  async function discoverService(serviceName) {
    const instances = await client.getAll().prefix(`/services/${serviceName}`).strings();
    return Object.entries(instances).map(([key, value]) => JSON.parse(value));
  }
  async function watchService(serviceName, callback) {
    const watcher = track.watcher(await client.watch().prefix(`/services/${serviceName}`).create());
    watcher
      .on('put', async () => callback(await discoverService(serviceName)))
      .on('delete', async () => callback(await discoverService(serviceName)));
    return watcher;
  }
  return { registerService, discoverService, watchService };
}

/** fetch against the server's /mast/v1 API, bounded; resolves with { status, body }. */
async function api(method, path, body) {
  const res = await fetch(`${server.url}/mast/v1${path}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(5_000),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, body: json };
}

test('a. an instance registered over HTTP is discovered and watched by the seeds', { skip, timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const seed = seedRegistry(s.client(), s);
  const updates = [];
  await seed.watchService('http-svc', instances => updates.push(instances));

  const r = await api('POST', '/services/http-svc/instances', { host: '127.0.0.1', port: 4001, ttl: 10 });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  t.after(() => api('DELETE', `/services/http-svc/instances/${encodeURIComponent(r.body.id)}`).catch(() => {}));

  const found = await seed.discoverService('http-svc');
  assert.equal(found.length, 1);
  assert.equal(found[0].host, '127.0.0.1');
  assert.equal(found[0].port, 4001);
  await waitFor(
    () => updates.some(set => set.some(i => i.host === '127.0.0.1' && i.port === 4001)),
    EVENT_WAIT_MS,
    "the seeds' watcher sees the HTTP-registered instance",
  );
});

test("b. the seeds' registerService instance is listed by the HTTP API", { skip, timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const seed = seedRegistry(s.client(), s);
  await seed.registerService('seed-svc', 'instance_1', { host: 'localhost', port: 3000 });

  const r = await api('GET', '/services/seed-svc/instances');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.instances.length, 1);
  const [inst] = r.body.instances;
  assert.equal(inst.id, 'instance_1');
  assert.equal(inst.host, 'localhost');
  assert.equal(inst.port, 3000);
  assert.equal(inst.healthy, true);
});

/** A seeds-style etcd3 watch on a config's content key, recording each put's raw value. */
async function watchContent(s, key) {
  const values = [];
  const watcher = s.watcher(await s.client().watch().key(key).create());
  watcher.on('put', kv => values.push(kv.value.toString()));
  return values;
}

test('c. a config published over HTTP reaches an etcd3 watcher on its content key', { skip, timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const values = await watchContent(s, '/configs/prod/app/db.json');
  const content = '{"host": "db1", "pool": 5}';
  const r = await api('PUT', '/configs/prod/app/db.json', { content, format: 'json' });
  assert.ok(r.status === 200 || r.status === 201, `publish: ${r.status} ${JSON.stringify(r.body)}`);
  await waitFor(() => values.length >= 1, EVENT_WAIT_MS, 'the watcher sees the content');
  assert.deepEqual(values, [content]);
  assert.equal(await s.client().get('/configs/prod/app/db.json').string(), content);
});

test('d. invalid JSON over HTTP is refused with 400 and the watcher sees nothing', { skip, timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const key = '/configs/prod/app/flags.json';
  const values = await watchContent(s, key);
  const bad = await api('PUT', '/configs/prod/app/flags.json', { content: '{"on": tru', format: 'json' });
  assert.equal(bad.status, 400, JSON.stringify(bad.body));
  await sleep(300);
  assert.deepEqual(values, []);
  assert.equal(await s.client().get(key).string(), null);
  // A valid publish afterwards is the first thing the watcher sees.
  const good = '{"on": true}';
  const r = await api('PUT', '/configs/prod/app/flags.json', { content: good, format: 'json' });
  assert.ok(r.status === 200 || r.status === 201, `publish: ${r.status}`);
  await waitFor(() => values.length >= 1, EVENT_WAIT_MS, 'the watcher sees the valid content');
  assert.deepEqual(values, [good]);
});

// e. The Rust SDK and the seeds' Node code see each other's instances. `mast service register`
// registers through the SDK's `register` (lease + keepalive) and `mast service get -w json`
// lists through the SDK's `discover`, so the CLI stands in for a Rust service here.
test('e. SDK-registered instances are discovered by the seeds, and the other way round', { skip, timeout: TEST_TIMEOUT_MS }, async t => {
  const { spawn, execFile } = await import('node:child_process');
  const endpoint = server.url.replace(/^http:\/\//, '');
  const s = scope(t);
  const seed = seedRegistry(s.client(), s);

  const reg = spawn(process.env.MAST_BIN, ['--endpoints', endpoint, 'service', 'register', 'sdk-svc', 'rust-1', '127.0.0.1:5001', '--ttl', '5'], { stdio: 'ignore' });
  t.after(() => {
    if (reg.exitCode === null) reg.kill('SIGKILL');
  });
  await waitFor(async () => (await seed.discoverService('sdk-svc')).some(i => i.host === '127.0.0.1' && i.port === 5001), EVENT_WAIT_MS, "the seeds' discoverService finds the SDK registration");

  await seed.registerService('node-svc', 'instance_1', { host: 'localhost', port: 3100 });
  const listed = await new Promise((resolve, reject) => {
    execFile(process.env.MAST_BIN, ['--endpoints', endpoint, 'service', 'get', 'node-svc', '-w', 'json'], { timeout: 5_000 }, (err, stdout) => (err ? reject(err) : resolve(JSON.parse(stdout))));
  });
  assert.equal(listed.length, 1);
  assert.equal(listed[0].id, 'instance_1');
  assert.equal(listed[0].instance.host, 'localhost');
  assert.equal(listed[0].instance.port, 3100);
});
