// Console benchmark (issue 16): with 10,000 configs and 10,000 instances loaded into a release
// `mast serve`, how long each page takes to become interactive in headless Chromium, and how
// long a config search takes to answer — both measured in the browser (performance.now(), from
// navigation start for a page, from the click for a search), median of CONSOLE_BENCH_RUNS.
//
//   cargo build --release --bin mast
//   MAST_BIN=target/release/mast node console/bench/pages.mjs      # writes benchmarks/console.md
//
// Environment: CONSOLE_BENCH_CONFIGS (10000), CONSOLE_BENCH_INSTANCES (10000),
// CONSOLE_BENCH_RUNS (5), CONSOLE_BENCH_OUT (benchmarks/console.md), CHROMIUM_BIN.
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { chromium } from 'playwright-core';
import { startServer } from '../../tests/node/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.join(here, '..', '..');
const CONFIGS = Number(process.env.CONSOLE_BENCH_CONFIGS ?? 10_000);
const INSTANCES = Number(process.env.CONSOLE_BENCH_INSTANCES ?? 10_000);
const RUNS = Number(process.env.CONSOLE_BENCH_RUNS ?? 5);
const DEFAULT_OUT = path.join(repo, 'benchmarks', 'console.md');
const OUT = process.env.CONSOLE_BENCH_OUT ?? DEFAULT_OUT;
const SERVICES = Math.min(100, INSTANCES);
const pad = (i) => String(i).padStart(5, '0');
/** The config whose content holds the needle, and the one the config page opens. */
const NEEDLE = Math.min(4321, CONFIGS - 1);
const CONCURRENCY = 32;
const PAGE_BUDGET_MS = 1000;
const SEARCH_BUDGET_MS = 200;

/** Runs `n` requests made by `make(i)`, CONCURRENCY at a time; prints progress. */
async function load(what, n, make) {
  let next = 0;
  let done = 0;
  const started = Date.now();
  async function worker() {
    while (next < n) {
      const i = next++;
      const r = await make(i);
      if (!r.ok) throw new Error(`${what} ${i}: ${r.status} ${await r.text()}`);
      await r.arrayBuffer();
      done++;
      if (done % 1000 === 0) process.stderr.write(`\r${what}: ${done}/${n}`);
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  process.stderr.write(`\r${what}: ${n}/${n} in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const server = await startServer();
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const json = { 'Content-Type': 'application/json' };
  await load('configs', CONFIGS, (i) =>
    fetch(`${server.url}/mast/v1/configs/public/DEFAULT_GROUP/app-${pad(i)}.json`, {
      method: 'PUT',
      headers: json,
      body: JSON.stringify({ content: JSON.stringify({ id: i, port: 8000 + (i % 1000), owner: `team-${i % 37}`, marker: i === NEEDLE ? `needle-${NEEDLE}` : 'hay' }) }),
    }),
  );
  await load('instances', INSTANCES, (i) =>
    fetch(`${server.url}/mast/v1/services/svc-${i % SERVICES}/instances`, {
      method: 'POST',
      headers: json,
      body: JSON.stringify({ id: `i${i}`, host: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, port: 8080, ephemeral: false }),
    }),
  );

  // bypassCSP: the readiness checks are evaluated in the page, which its CSP (no eval) forbids.
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, bypassCSP: true });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  const base = `${server.url}/ui/`;
  // Each page with what "interactive" means on it: its data on screen.
  const pages = [
    ['Overview', '#/overview', () => document.querySelector('[data-testid=revision]')?.textContent !== '…' && document.querySelectorAll('tbody tr').length > 0],
    ['Keys (/services/svc-1/)', '#/keys?prefix=/services/svc-1/', `() => document.querySelectorAll('.tree [role=listitem]').length >= ${Math.floor(INSTANCES / SERVICES / 2)}`],
    ['Services', '#/services', `() => document.querySelectorAll('tbody tr').length >= ${SERVICES}`],
    [`Service (${Math.floor(INSTANCES / SERVICES)} instances)`, '#/services/svc-0', `() => document.querySelectorAll('tbody tr').length >= ${Math.floor(INSTANCES / SERVICES)}`],
    [`Configs (first page of ${CONFIGS})`, '#/configs', `() => document.querySelectorAll('[data-testid=config-rows] tr').length === ${Math.min(50, CONFIGS)}`],
    ['Config (editor + history)', `#/configs/public/DEFAULT_GROUP/app-${pad(NEEDLE)}.json`, () => !!document.querySelector('[data-testid=config-meta]') && !!document.querySelector('.cm-content') && document.querySelectorAll('tbody tr').length > 0],
    ['Events', '#/events', () => !!document.querySelector('[data-testid=events]')],
    ['Users', '#/users', () => !!document.querySelector('#users-title')],
  ];
  const rows = [];
  for (const [name, hash, ready] of pages) {
    const times = [];
    for (let r = 0; r < RUNS; r++) {
      await page.goto('about:blank');
      await page.goto(base + hash);
      const h = await page.waitForFunction(`(${ready.toString()})() && performance.now()`, null, { polling: 'raf' });
      times.push(await h.jsonValue());
    }
    rows.push(['page', name, median(times), Math.max(...times), PAGE_BUDGET_MS]);
    process.stderr.write(`${name}: ${median(times).toFixed(0)} ms\n`);
  }
  const ids = Array.from({ length: CONFIGS }, (_, i) => `app-${pad(i)}.json`);
  const prefix = `app-${pad(CONFIGS - 1).slice(0, 4)}`;
  const searches = [
    [`data id contains "${pad(NEEDLE)}"`, 'search', pad(NEEDLE), ids.filter((d) => d.includes(pad(NEEDLE))).length],
    [`data id starts with "${prefix}"`, 'dataIdPrefix', prefix, ids.filter((d) => d.startsWith(prefix)).length],
    [`content contains "needle-${NEEDLE}"`, 'content', `needle-${NEEDLE}`, 1],
  ];
  for (const [name, mode, text, expect] of searches) {
    const times = [];
    for (let r = 0; r < RUNS; r++) {
      await page.goto(base + '#/configs');
      await page.waitForSelector('[data-testid=config-total]');
      await page.selectOption('select[name=mode]', mode);
      await page.fill('input[name=q]', text);
      await page.evaluate(() => {
        window.__t0 = performance.now();
      });
      await page.click('button[type=submit]');
      const h = await page.waitForFunction(
        (n) => document.querySelector('[data-testid=config-total]')?.textContent?.startsWith(`${n} configs`) && performance.now() - window.__t0,
        expect,
        { polling: 'raf' },
      );
      times.push(await h.jsonValue());
    }
    rows.push(['search', name, median(times), Math.max(...times), SEARCH_BUDGET_MS]);
    process.stderr.write(`search ${name}: ${median(times).toFixed(0)} ms\n`);
  }
  const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: repo }).toString().trim();
  const chromeVersion = browser.version();
  const lines = [
    `## Web console: time to interactive and search, ${CONFIGS} configs + ${INSTANCES} instances`,
    '',
    `${new Date().toISOString().slice(0, 16)}Z, ${os.cpus().length} cores; mast ${commit} (${(process.env.MAST_BIN ?? '').includes('release') ? 'release' : 'debug'} build); Chromium ${chromeVersion} headless, 1280×900;`,
    `${CONFIGS} configs (public / DEFAULT_GROUP) and ${INSTANCES} persistent instances in ${SERVICES} services loaded through /mast/v1.`,
    `Page: from navigation start to the page's data on screen (performance.now() in the page). Search: from the click`,
    `to the result count shown. Median and worst of ${RUNS} runs. Command: \`MAST_BIN=target/release/mast node console/bench/pages.mjs\`.`,
    '',
    '| kind | what | median ms | worst ms | budget ms | within |',
    '|---|---|---|---|---|---|',
    ...rows.map(([k, n, m, w, b]) => `| ${k} | ${n} | ${m.toFixed(0)} | ${w.toFixed(0)} | ${b} | ${w <= b ? 'yes' : 'no'} |`),
    '',
  ];
  writeFileSync(OUT, lines.join('\n'));
  process.stdout.write(lines.join('\n'));
  if (OUT === DEFAULT_OUT) {
    execFileSync('python3', [path.join(repo, 'scripts', 'update-include.py'), 'BENCHMARKS.md', path.relative(repo, OUT)], { cwd: repo, stdio: 'inherit' });
  }
  // Every measurement was taken (a page or search that never got ready throws above).
  if (rows.length !== pages.length + searches.length) throw new Error('missing measurements');
} finally {
  await browser.close();
  await server.stop();
}
