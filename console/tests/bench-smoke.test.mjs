// The console benchmark's short version: bench/pages.mjs with 300 configs and 300 instances,
// one run each, against the binary under test — every page and search gets measured (the
// script throws otherwise). The full run (10,000 + 10,000 on a release build) writes
// benchmarks/console.md.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

test('the console benchmark measures every page and search', { timeout: 180_000 }, async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'console-bench-'));
  const out = path.join(dir, 'console.md');
  try {
    await new Promise((resolve, reject) => {
      execFile(
        process.execPath,
        [path.join(here, '..', 'bench', 'pages.mjs')],
        {
          env: { ...process.env, CONSOLE_BENCH_CONFIGS: '300', CONSOLE_BENCH_INSTANCES: '300', CONSOLE_BENCH_RUNS: '1', CONSOLE_BENCH_OUT: out },
          timeout: 170_000,
          killSignal: 'SIGKILL',
        },
        (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stdout}\n${stderr}`)) : resolve()),
      );
    });
    const table = readFileSync(out, 'utf8');
    const rows = table.split('\n').filter((l) => l.startsWith('| page') || l.startsWith('| search'));
    assert.equal(rows.length, 11, table);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
