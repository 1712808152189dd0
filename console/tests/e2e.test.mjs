// The console in headless Chromium (Debian's, driven by playwright-core) against a real
// `mast serve` with auth on: sign in; the overview; browse keys; a config with a format error
// (shown inline, nothing stored); a valid publish that an etcdctl watcher receives; a diff of
// two versions; a rollback; an instance's weight changed in the console and seen by discovery;
// a read-only user's restricted console; the events page showing an etcdctl put. Every page
// is screenshot into test-output/ and checked with axe-core (no serious or critical
// violations). Every wait is bounded; the server and the browser are stopped in after().
import { after, afterEach, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { etcdctl, startServer, waitFor } from '../../tests/node/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.join(here, '..', 'test-output');
const axePath = createRequire(import.meta.url).resolve('axe-core/axe.min.js');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const ROOT_PW = 'console-root-pw';
const WAIT = 10_000;

let server;
let browser;
let page;

/** etcdctl as root. */
const ctl = (args) => etcdctl(server.url, ['--user', `root:${ROOT_PW}`, ...args]);

/** /mast/v1 as root (a token from the gateway). */
async function api(method, p, body) {
  const { token } = await (await fetch(`${server.url}/v3/auth/authenticate`, {
    method: 'POST',
    body: JSON.stringify({ name: 'root', password: ROOT_PW }),
  })).json();
  const r = await fetch(`${server.url}/mast/v1${p}`, {
    method,
    headers: { Authorization: token, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

/** Screenshot and axe-core check of the page as it is now. */
async function check(name) {
  await page.screenshot({ path: path.join(out, `${name}.png`), fullPage: true });
  await page.addScriptTag({ path: axePath });
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5) }));
  });
  const bad = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(bad, [], `${name}: accessibility violations ${JSON.stringify(bad, null, 1)}`);
}

async function signIn(user, password) {
  await page.goto(`${server.url}/ui/`);
  await page.getByLabel('User').fill(user);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText(`Signed in as ${user}`).waitFor({ timeout: WAIT });
}

before(async () => {
  mkdirSync(out, { recursive: true });
  server = await startServer({ rootPassword: ROOT_PW });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    timeout: 30_000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  // bypassCSP: only so axe-core can be injected; the console itself runs under its CSP.
  const context = await browser.newContext({ bypassCSP: true, viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(WAIT);
  page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e));
});

// The page as each test left it (what a failure looked like).
afterEach(async (t) => {
  await page?.screenshot({ path: path.join(out, `end-${t.name.replace(/[^a-z0-9]+/gi, '-').slice(0, 60)}.png`), fullPage: true }).catch(() => {});
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test('sign in, overview, keys', async () => {
  // `/` sends the browser to the console.
  await page.goto(`${server.url}/`);
  assert.match(page.url(), /\/ui\/$/);
  await check('login');
  await signIn('root', ROOT_PW);
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
  await page.getByRole('cell', { name: 'leader' }).waitFor();
  await waitFor(async () => (await page.getByTestId('revision').textContent()) !== '…', WAIT, 'revision shown');
  await check('overview');

  await ctl(['put', '/app/db/url', '{"host": "db.internal", "port": 5432}']);
  await ctl(['put', '/app/name', 'shop']);
  await page.goto(`${server.url}/ui/#/keys?prefix=/app/`);
  await page.getByRole('button', { name: '📁 db/' }).click();
  await page.getByRole('button', { name: 'url' }).click();
  await page.getByText('db.internal').waitFor();
  await page.getByText('version 1 · created at revision').waitFor();
  await check('keys');
});

test('a config with a format error is shown inline and not stored; a valid one reaches an etcd watcher', async () => {
  await page.goto(`${server.url}/ui/#/configs/public/DEFAULT_GROUP/app.json`);
  const editor = page.getByRole('textbox', { name: 'Content of app.json' });
  await editor.click();
  await page.keyboard.insertText('{"port": 8080,\n "debug": tru }');
  await page.getByRole('button', { name: 'Publish…' }).click();
  await page.getByRole('alert').filter({ hasText: 'invalid json' }).waitFor();
  // The error is on the line the parser names (line 2).
  await page.locator('.cm-lintRange-error').first().waitFor();
  await check('config-error');
  const stored = await api('GET', '/configs/public/DEFAULT_GROUP/app.json');
  assert.equal(stored.status, 404, 'nothing was stored');

  // An etcdctl watcher on the config's key, then a valid publish with its diff confirmed.
  // It watches from the next revision, so it sees the publish however late it starts.
  const status = JSON.parse(await ctl(['endpoint', 'status', '-w', 'json']));
  const next = String(status[0].Status.header.revision + 1);
  const watcher = spawn('/usr/bin/etcdctl', ['--endpoints', server.url, '--user', `root:${ROOT_PW}`, 'watch', '--rev', next, '/configs/public/DEFAULT_GROUP/app.json'], {
    env: { ...process.env, ETCDCTL_API: '3' },
  });
  let seen = '';
  watcher.stdout.on('data', (d) => (seen += d));
  try {
    await editor.click();
    await page.keyboard.press('Control+a');
    await page.keyboard.insertText('{"port": 8080, "debug": true}');
    await page.getByRole('button', { name: 'Publish…' }).click();
    const dialog = page.getByRole('dialog', { name: 'Publish app.json' });
    await dialog.waitFor();
    await dialog.getByText('A new config, version 1').waitFor();
    await check('config-confirm');
    await dialog.getByRole('button', { name: 'Publish', exact: true }).click();
    await page.getByTestId('config-meta').filter({ hasText: 'version 1' }).waitFor();
    await waitFor(() => seen.includes('"debug": true'), WAIT, 'the etcd watcher got the publish');
  } finally {
    watcher.kill('SIGKILL');
  }
});

test('diff two versions, roll back', async () => {
  // Version 2 through the API; the console shows it and diffs 1 against 2.
  const v2 = await api('PUT', '/configs/public/DEFAULT_GROUP/app.json', { content: '{"port": 9090, "debug": true}' });
  assert.equal(v2.status, 200, JSON.stringify(v2.body));
  await page.reload();
  await page.getByTestId('config-meta').filter({ hasText: 'version 2' }).waitFor();
  await page.getByLabel('Compare from version 1').check();
  await page.getByLabel('Compare to version 2').check();
  await page.getByRole('button', { name: 'Compare' }).click();
  await page.locator('.cm-mergeView .cm-changedLine').first().waitFor();
  await check('config-history');

  page.once('dialog', (d) => d.accept());
  await page.getByRole('button', { name: 'Roll back to 1' }).click();
  await page.getByTestId('config-meta').filter({ hasText: 'version 3' }).waitFor();
  const now = await api('GET', '/configs/public/DEFAULT_GROUP/app.json');
  assert.deepEqual(JSON.parse(now.body.content), { port: 8080, debug: true });
  assert.equal(now.body.version, 3);
});

test('a gray release started in the console reaches only its clients, then is promoted', async () => {
  await page.goto(`${server.url}/ui/#/configs/public/DEFAULT_GROUP/app.json`);
  await page.getByTestId('config-meta').filter({ hasText: 'version 3' }).waitFor();
  await page.getByText('No client has reported this config.').waitFor();
  await page.getByText('Start a gray release').click();
  await page.getByLabel('Name', { exact: true }).fill('canary');
  await page.getByLabel('Rule type').selectOption('labels');
  await page.getByLabel('Rule value').fill('canary=true');
  const editor = page.getByRole('textbox', { name: 'Content of the gray release' });
  await editor.click();
  await page.keyboard.press('Control+a');
  await page.keyboard.insertText('{"port": 7070, "debug": true}');
  await page.getByRole('button', { name: 'Start gray release' }).click();
  await page.getByRole('button', { name: 'Promote canary' }).waitFor();
  await check('config-gray');
  // A canary client gets the gray; any other client the normal version.
  const canary = await api('GET', '/configs/public/DEFAULT_GROUP/app.json?clientId=c1&labels=canary%3Dtrue');
  assert.deepEqual(JSON.parse(canary.body.content), { port: 7070, debug: true });
  const other = await api('GET', '/configs/public/DEFAULT_GROUP/app.json?clientId=c2&labels=canary%3Dfalse');
  assert.deepEqual(JSON.parse(other.body.content), { port: 8080, debug: true });

  page.once('dialog', (d) => d.accept());
  await page.getByRole('button', { name: 'Promote canary' }).click();
  // History: 4 is the gray's publish, 5 its promotion.
  await page.getByTestId('config-meta').filter({ hasText: 'version 5' }).waitFor();
  await page.getByRole('cell', { name: 'gray-promote' }).waitFor();
  await page.getByText('No gray release').waitFor();
  const now = await api('GET', '/configs/public/DEFAULT_GROUP/app.json');
  assert.deepEqual(JSON.parse(now.body.content), { port: 7070, debug: true });
});

test('configs exported as a Nacos zip, imported into another namespace and cloned, in the console', async () => {
  await page.goto(`${server.url}/ui/#/configs?namespace=public`);
  await page.getByText('Export, import, clone').click();
  const [file] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: /Export public as a Nacos zip/ }).click()]);
  assert.equal(file.suggestedFilename(), 'nacos_config_export_public.zip');
  const zipPath = path.join(out, 'export.zip');
  await file.saveAs(zipPath);
  await page.getByLabel('Zip to import').setInputFiles(zipPath);
  await page.getByLabel('Import into namespace').fill('imported');
  await page.getByRole('button', { name: 'Import', exact: true }).click();
  await page.getByTestId('transfer-result').filter({ hasText: '1 written, 0 skipped, 0 refused' }).waitFor();
  // Again with "import nothing": the conflict is shown, nothing changes.
  await page.getByRole('button', { name: 'Import', exact: true }).click();
  await page.getByRole('alert').filter({ hasText: 'exist in imported already' }).waitFor();
  await page.getByLabel('Clone to namespace').fill('cloned');
  await page.getByRole('button', { name: 'Clone', exact: true }).click();
  await page.getByTestId('transfer-result').filter({ hasText: '1 written' }).waitFor();
  await check('config-transfer');
  for (const ns of ['imported', 'cloned']) {
    const c = await api('GET', `/configs/${ns}/DEFAULT_GROUP/app.json`);
    assert.equal(c.status, 200, `${ns}: ${JSON.stringify(c.body)}`);
    assert.deepEqual(JSON.parse(c.body.content), { port: 7070, debug: true });
    assert.equal(c.body.format, 'json');
  }
});

test("an instance's weight changed in the console is what discovery answers", async () => {
  const r = await api('POST', '/services/orders/instances', { id: 'o1', host: '10.0.0.1', port: 8080, ttl: 60 });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  await page.goto(`${server.url}/ui/#/services`);
  await page.getByRole('link', { name: 'orders' }).click();
  await page.getByLabel('Weight of o1').fill('5');
  await page.getByRole('button', { name: 'Set' }).click();
  await page.getByText('operator override').waitFor();
  // An etcdctl watch on the service is listed under who watches it.
  const watcher = spawn('/usr/bin/etcdctl', ['--endpoints', server.url, '--user', `root:${ROOT_PW}`, 'watch', '--prefix', '/services/orders/'], {
    env: { ...process.env, ETCDCTL_API: '3' },
  });
  try {
    await waitFor(async () => (await api('GET', '/services/orders/watchers')).body.watchers.length === 1, WAIT, 'the watch is registered');
    await page.getByRole('button', { name: 'Refresh' }).click();
    await page.getByTestId('watchers').getByText('etcd watch (gRPC)').waitFor();
    await page.getByTestId('watchers').getByRole('cell', { name: 'root' }).waitFor();
    await check('service');
  } finally {
    watcher.kill('SIGKILL');
  }
  const found = await api('GET', '/services/orders/instances');
  assert.equal(found.body.instances[0].weight, 5);

  // Metadata edited in the console; the instance registers again with its own values: the
  // operator's weight and metadata stay.
  await page.getByLabel('Metadata of o1').fill('canary=true');
  await page.getByRole('button', { name: 'Save' }).click();
  await waitFor(async () => (await api('GET', '/services/orders/instances')).body.instances[0].metadata.canary === 'true', WAIT, 'metadata saved');
  const again = await api('POST', '/services/orders/instances', { id: 'o1', host: '10.0.0.1', port: 8080, ttl: 60, metadata: { build: '42' } });
  assert.equal(again.status, 201, JSON.stringify(again.body));
  const after = (await api('GET', '/services/orders/instances')).body.instances[0];
  assert.equal(after.weight, 5, JSON.stringify(after));
  assert.deepEqual(after.metadata, { build: '42', canary: 'true' });
});

test('a user with a read-only role, made in the console, sees a console without edits', async () => {
  await page.goto(`${server.url}/ui/#/users`);
  await page.getByLabel('New role').fill('configs-read');
  await page.getByRole('button', { name: 'Add role' }).click();
  await page.getByRole('button', { name: 'configs-read' }).click();
  await page.getByLabel('Permission type').selectOption('READ');
  await page.getByLabel('Key', { exact: true }).fill('/config');
  await page.getByRole('button', { name: 'Grant permission' }).click();
  await page.getByText('/config* (prefix)').waitFor();
  await page.getByLabel('New user').fill('viewer');
  await page.getByLabel('Password', { exact: true }).fill('viewer-pw');
  await page.getByRole('button', { name: 'Add user' }).click();
  await page.getByRole('button', { name: 'viewer', exact: true }).click();
  await page.getByLabel('Role to grant').selectOption('configs-read');
  await page.getByRole('button', { name: 'Grant role' }).click();
  await page.getByRole('button', { name: 'Revoke configs-read' }).waitFor();
  await check('users');
  // What etcdctl sees is what the console made.
  assert.match(await ctl(['user', 'get', 'viewer']), /Roles: configs-read/);
  assert.match(await ctl(['role', 'get', 'configs-read']), /\[\/config, \/confih\)/);

  await page.getByRole('button', { name: 'Sign out' }).click();
  await signIn('viewer', 'viewer-pw');
  const nav = page.getByRole('navigation', { name: 'Sections' });
  await nav.getByRole('link', { name: 'Configs' }).waitFor();
  assert.equal(await nav.getByRole('link', { name: 'Services' }).count(), 0, 'no services section');
  assert.equal(await nav.getByRole('link', { name: 'Users' }).count(), 0, 'no users section');
  await nav.getByRole('link', { name: 'Configs' }).click();
  await page.getByRole('row').filter({ hasText: 'public' }).getByRole('link', { name: 'app.json' }).click();
  await page.getByTestId('config-meta').waitFor();
  assert.equal(await page.getByRole('button', { name: 'Publish…' }).count(), 0, 'no publish button');
  assert.equal(await page.getByRole('button', { name: /Roll back/ }).count(), 0, 'no rollback');
  await check('read-only-config');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await signIn('root', ROOT_PW);
});

test('the events page shows a change made by etcdctl', async () => {
  await page.goto(`${server.url}/ui/#/events`);
  await page.getByText('Waiting for changes…').waitFor();
  await ctl(['put', '/feature/flags', 'on']);
  await page.getByTestId('events').getByText('put /feature/flags').waitFor();
  // A key that goes with its lease is named so.
  const lease = (await ctl(['lease', 'grant', '60'])).split(' ')[1];
  await ctl(['put', '/feature/session', 'x', '--lease', lease]);
  await ctl(['lease', 'revoke', lease]);
  await page.getByTestId('events').getByText(`delete /feature/session (lease ${lease} revoked)`).waitFor();
  // One whose TTL runs out is named expired (the leader's lessor revoked it).
  const short = (await ctl(['lease', 'grant', '1'])).split(' ')[1];
  await ctl(['put', '/feature/short', 'x', '--lease', short]);
  await page.getByTestId('events').getByText(`delete /feature/short (lease ${short} expired)`).waitFor();
  await check('events');
});

test('at phone width, in the dark theme, the pages stay usable and accessible', async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${server.url}/ui/#/overview`);
  await page.getByRole('button', { name: 'Switch to dark theme' }).click();
  // The button's label follows the re-render that the theme change makes.
  await page.getByRole('button', { name: 'Switch to light theme' }).waitFor();
  assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark');
  for (const [name, hash, ready] of [
    ['phone-overview', '#/overview', () => page.getByRole('cell', { name: 'leader' }).waitFor()],
    ['phone-configs', '#/configs/public/DEFAULT_GROUP/app.json', () => page.getByLabel('Compare from version 1').waitFor()],
    ['phone-services', '#/services/orders', () => page.getByLabel('Weight of o1').waitFor()],
  ]) {
    // A fresh load at this width, as a phone opens it.
    await page.goto(`${server.url}/ui/${hash}`);
    await page.reload();
    await ready();
    // Nothing wider than the screen but the tables' own scrolling boxes (measured once the
    // page's data is on screen, in one look at the layout).
    const [overflow, wide] = await page.evaluate(() => {
      const w = document.documentElement.clientWidth;
      return [
        document.documentElement.scrollWidth - w,
        [...document.querySelectorAll('body *')]
          .filter((e) => e.getBoundingClientRect().right > w + 1 && !e.parentElement?.closest('.table-wrap'))
          .slice(0, 5)
          .map((e) => `${e.tagName.toLowerCase()}.${e.className} ${Math.round(e.getBoundingClientRect().width)}`),
      ];
    });
    assert.ok(overflow <= 1, `${name}: the page is ${overflow}px wider than the screen: ${wide.join(', ')}`);
    await check(name);
  }
  await page.setViewportSize({ width: 1280, height: 900 });
});
