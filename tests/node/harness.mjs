// Test harness: starts one server (Mast or a real etcd) on free 127.0.0.1 ports,
// waits until it answers, and stops it again. Every wait here is bounded.
//
//   MAST_BIN=/path/to/mast   -> `mast serve ...`
//   ETCD_BIN=/path/to/etcd   -> real etcd (default: /usr/bin/etcd)
//   SERVER_LOG=1             -> copy the server's output to this process' stderr

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Etcd3 } from 'etcd3';

const HOST = '127.0.0.1';
const START_TIMEOUT_MS = 20_000;
const STOP_GRACE_MS = 3_000;
const LOG_TAIL_BYTES = 16 * 1024;

/** Rejects with `what` if `promise` has not settled within `ms`. */
export async function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Polls `check` (sync or async, truthy = done) every `everyMs` until `ms` elapse.
 * Errors thrown by `check` count as "not yet", except those marked `fatal`.
 */
export async function waitFor(check, ms, what, everyMs = 100) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      if (e.fatal) throw e;
      last = e;
    }
    await sleep(everyMs);
  }
  throw new Error(`timed out after ${ms} ms: ${what}${last ? ` (last error: ${last.message})` : ''}`);
}

/** Resolves with the first emission of `event` on `emitter`, bounded by `ms`. */
export function onceWithin(emitter, event, ms) {
  return withTimeout(
    new Promise(resolve => emitter.once(event, (...args) => resolve(args))),
    ms,
    `event '${event}'`,
  );
}

/** A free TCP port on 127.0.0.1: bind port 0, read it, close. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, HOST, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function tcpAccepts(port) {
  return new Promise(resolve => {
    const sock = net.connect({ host: HOST, port });
    const done = ok => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(500, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

/**
 * Starts the server under test. Returns { url, kind, stop() }.
 * stop() sends SIGTERM to the child's PID, SIGKILL after 3 s, and removes the data dir.
 */
export async function startServer() {
  const clientPort = await freePort();
  const url = `http://${HOST}:${clientPort}`;
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'mast-node-test-'));

  let cmd;
  let args;
  let kind;
  if (process.env.MAST_BIN) {
    kind = 'mast';
    cmd = process.env.MAST_BIN;
    args = [
      'serve',
      '--name', 'node-test',
      '--data-dir', dataDir,
      '--listen-client-urls', url,
      '--advertise-client-urls', url,
    ];
  } else {
    kind = 'etcd';
    cmd = process.env.ETCD_BIN || '/usr/bin/etcd';
    let peerPort = await freePort();
    while (peerPort === clientPort) peerPort = await freePort();
    const peer = `http://${HOST}:${peerPort}`;
    args = [
      '--name', 'node-test',
      '--data-dir', dataDir,
      '--listen-client-urls', url,
      '--advertise-client-urls', url,
      '--listen-peer-urls', peer,
      '--initial-advertise-peer-urls', peer,
      '--initial-cluster', `node-test=${peer}`,
    ];
  }

  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let logTail = '';
  const keep = chunk => {
    if (process.env.SERVER_LOG) process.stderr.write(chunk);
    logTail = (logTail + chunk.toString()).slice(-LOG_TAIL_BYTES);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exited = null;
  const exitPromise = new Promise(resolve => {
    child.once('exit', (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
    child.once('error', err => {
      exited = { error: err };
      resolve(exited);
    });
  });

  const stop = async () => {
    if (exited === null && child.pid !== undefined) {
      try {
        process.kill(child.pid, 'SIGTERM');
      } catch {
        /* already gone */
      }
      const graceful = await Promise.race([exitPromise, sleep(STOP_GRACE_MS).then(() => null)]);
      if (graceful === null) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
        await Promise.race([exitPromise, sleep(STOP_GRACE_MS)]);
      }
    }
    await rm(dataDir, { recursive: true, force: true });
  };

  const describeFailure = why => {
    const err = new Error(`${kind} (${cmd}) ${why}\n--- server output (tail) ---\n${logTail}`);
    err.fatal = true; // stops waitFor at once
    return err;
  };

  // Wait until it answers: first TCP, then a real etcd3 `get` through gRPC.
  const deadline = Date.now() + START_TIMEOUT_MS;
  const left = () => Math.max(0, deadline - Date.now());
  try {
    await waitFor(
      async () => {
        if (exited) throw describeFailure(`exited early: ${JSON.stringify(exited)}`);
        return tcpAccepts(clientPort);
      },
      left(),
      `${url} accepting TCP`,
    );
    const probe = new Etcd3({ hosts: url });
    try {
      await waitFor(
        async () => {
          if (exited) throw describeFailure(`exited early: ${JSON.stringify(exited)}`);
          await withTimeout(probe.get('x').string(), Math.min(2_000, left()), 'probe get');
          return true;
        },
        left(),
        `${url} answering client.get('x')`,
        200,
      );
    } finally {
      probe.close();
    }
  } catch (e) {
    await stop();
    if (e.fatal) throw e;
    throw describeFailure(`did not become ready: ${e.message}`);
  }

  return { url, kind, stop, logTail: () => logTail };
}
