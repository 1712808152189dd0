// The seed's Nacos config flow (seed 000: `new NacosConfigClient({ serverAddr, namespace:
// 'dev' })` and `getConfig('my-app-config.json', 'DEFAULT_GROUP')`), run with the npm
// `nacos-config` client — unchanged — against `mast serve`'s Nacos HTTP API, and the same
// configs seen and changed through the other APIs: an etcd watch, an etcd put and /mast/v1.
//
// Mast only (etcd has no Nacos API): skipped unless MAST_BIN is set.
//
//   cd tests/node && MAST_BIN=../../target/debug/mast node --test nacos.test.mjs

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Etcd3 } from 'etcd3';
import { NacosConfigClient } from 'nacos-config';
import { freePort, startServer, waitFor, withTimeout } from './harness.mjs';

const MAST = Boolean(process.env.MAST_BIN);
const TEST_TIMEOUT_MS = 30_000;
const EVENT_WAIT_MS = 10_000;

let server;
let nacosAddr;
let etcd;
let cacheRoot;
const clients = [];

before(async () => {
  if (!MAST) return;
  const port = await freePort();
  nacosAddr = `127.0.0.1:${port}`;
  server = await startServer({ args: ['--nacos-addr', nacosAddr] });
  etcd = new Etcd3(server.clientOptions);
  cacheRoot = await mkdtemp(path.join(os.tmpdir(), 'mast-nacos-cache-'));
  // The Nacos port opens right after the etcd port: wait for it to answer.
  await waitFor(
    async () => (await fetch(`http://${nacosAddr}/nacos/v1/cs/configs?dataId=probe&group=G`)).status === 404,
    10_000,
    `Nacos API on ${nacosAddr}`,
  );
});

after(async () => {
  for (const c of clients) c.close();
  etcd?.close();
  await server?.stop();
  if (cacheRoot) await rm(cacheRoot, { recursive: true, force: true });
});

/**
 * A NacosConfigClient as the seed makes it, its local snapshot kept in a temporary dir.
 * (Clients in one process share the first one's connection and namespace: `cluster-client`.)
 */
function nacosClient(requestTimeout = 6000, namespace = 'dev') {
  const cacheDir = path.join(cacheRoot, String(clients.length));
  const c = new NacosConfigClient({ serverAddr: nacosAddr, namespace, cacheDir, requestTimeout });
  c.on('error', () => {}); // long-poll errors are retried by the client itself
  clients.push(c);
  return c;
}

/** Resolves with the first value `listener` receives that `pred` accepts. */
function nextValue(values, pred, what) {
  return waitFor(() => values.find(pred) !== undefined, EVENT_WAIT_MS, what, 50);
}

test('the seed: getConfig returns what was published, and JSON.parse works on it', { skip: !MAST, timeout: TEST_TIMEOUT_MS }, async () => {
  const client = nacosClient();
  const config = { db: { host: 'db.dev', password: 'p1' }, port: 3000 };
  assert.equal(await client.publishSingle('my-app-config.json', 'DEFAULT_GROUP', JSON.stringify(config), { type: 'json' }), true);

  // The seed's factory, verbatim but for the client it is given.
  const nacosConfigFactory = async () => {
    const content = await client.getConfig('my-app-config.json', 'DEFAULT_GROUP');
    return JSON.parse(content);
  };
  assert.deepEqual(await nacosConfigFactory(), config);

  // Same data: the content key holds the raw content, /mast/v1 has a version and the md5.
  const raw = await etcd.get('/configs/dev/DEFAULT_GROUP/my-app-config.json').string();
  assert.deepEqual(JSON.parse(raw), config);
  const view = await (await fetch(`${server.url}/mast/v1/configs/dev/DEFAULT_GROUP/my-app-config.json`)).json();
  assert.equal(view.format, 'json');
  assert.ok(view.version >= 1);
  assert.deepEqual(JSON.parse(view.content), config);
});

test('subscribe receives changes made through Nacos, an etcd put and /mast/v1', { skip: !MAST, timeout: TEST_TIMEOUT_MS }, async () => {
  const publisher = nacosClient();
  const listener = nacosClient();
  await publisher.publishSingle('live.json', 'DEFAULT_GROUP', '{"v":1}', { type: 'json' });
  const seen = [];
  listener.subscribe({ dataId: 'live.json', group: 'DEFAULT_GROUP' }, content => seen.push(content));
  await nextValue(seen, c => c === '{"v":1}', 'the initial content');

  // An etcd watcher sees a Nacos publish.
  const watcher = await etcd.watch().key('/configs/dev/DEFAULT_GROUP/live.json').create();
  const watched = [];
  watcher.on('put', kv => watched.push(kv.value.toString()));
  try {
    await publisher.publishSingle('live.json', 'DEFAULT_GROUP', '{"v":2}', { type: 'json' });
    await nextValue(seen, c => c === '{"v":2}', 'a Nacos publish');
    await nextValue(watched, c => c === '{"v":2}', 'the etcd watch event of a Nacos publish');

    // A plain etcd put on the content key reaches the Nacos listener (its md5 changed).
    await etcd.put('/configs/dev/DEFAULT_GROUP/live.json').value('{"v":3}');
    await nextValue(seen, c => c === '{"v":3}', 'an etcd put');

    // A /mast/v1 publish, then a rollback (a new version with old content) reach it too.
    const url = `${server.url}/mast/v1/configs/dev/DEFAULT_GROUP/live.json`;
    let r = await fetch(url, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ content: '{"v":4}' }) });
    assert.equal(r.status, 200, await r.text());
    await nextValue(seen, c => c === '{"v":4}', 'a /mast/v1 publish');
    r = await fetch(`${url}/rollback`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ version: 1 }) });
    assert.equal(r.status, 200, await r.text());
    await nextValue(seen, c => c === '{"v":1}' && seen.lastIndexOf('{"v":1}') > seen.indexOf('{"v":4}'), 'a /mast/v1 rollback');
  } finally {
    await watcher.cancel();
  }
});

test('bad input: invalid JSON, missing parameters and bad names are refused and store nothing', { skip: !MAST, timeout: TEST_TIMEOUT_MS }, async () => {
  const client = nacosClient();
  await client.publishSingle('strict.json', 'DEFAULT_GROUP', '{"ok":true}', { type: 'json' });
  // The client sends a refused publish again until its request timeout, then throws.
  const impatient = nacosClient(1000);
  await assert.rejects(impatient.publishSingle('strict.json', 'DEFAULT_GROUP', '{"ok":', { type: 'json' }));
  assert.equal(await client.getConfig('strict.json', 'DEFAULT_GROUP'), '{"ok":true}');

  const base = `http://${nacosAddr}/nacos/v1/cs/configs`;
  const form = body => ({ method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body });
  // Nacos's answers: a missing parameter is its catch-all 500, a malformed one a 400.
  for (const [body, status, want] of [
    ['dataId=strict.json&group=DEFAULT_GROUP&tenant=dev&type=json&content=%7B%22ok%22%3A', 400, /^caused: invalid json: .*;$/],
    ['group=G&content=x', 500, /^caused: Required request parameter &#39;dataId&#39; for method parameter type String is not present;$/],
    ['dataId=a&content=x', 500, /&#39;group&#39;/],
    ['dataId=a&group=G', 500, /&#39;content&#39;/],
    ['dataId=a&group=G&content=+', 400, /^caused: content is blank :  ;$/],
    ['dataId=a&group=&content=x', 400, /^caused: invalid group : ;$/],
    ['dataId=a%2Fb&group=G&content=x', 400, /^Param 'dataId' is illegal, illegal characters should not appear in the param\.\r\n$/],
    ['dataId=a&group=G&content=x&type=nope', 400, /unknown config type nope/],
  ]) {
    const r = await fetch(base, form(body));
    assert.equal(r.status, status, body);
    assert.match(await r.text(), want, body);
  }
  const r = await fetch(`${base}/listener`, form(`Listening-Configs=${encodeURIComponent('a\u0002b\u0001')}`));
  assert.equal(r.status, 400);
  assert.equal(await r.text(), 'caused: invalid probeModify;');
  assert.equal((await etcd.getAll().prefix('/configs/public/G/').keys()).length, 0);
});

test('remove deletes the config (history kept) and getConfig answers null', { skip: !MAST, timeout: TEST_TIMEOUT_MS }, async () => {
  const client = nacosClient();
  await client.publishSingle('gone.properties', 'DEFAULT_GROUP', 'a=1', { type: 'properties' });
  assert.equal(await client.getConfig('gone.properties', 'DEFAULT_GROUP'), 'a=1');
  assert.equal(await client.remove('gone.properties', 'DEFAULT_GROUP'), true);
  assert.equal(await withTimeout(client.getConfig('gone.properties', 'DEFAULT_GROUP'), 10_000, 'getConfig'), null);
  const h = await (await fetch(`${server.url}/mast/v1/configs/dev/DEFAULT_GROUP/gone.properties/history`)).json();
  assert.deepEqual(h.versions.map(v => v.op), ['delete', 'publish']);
});
