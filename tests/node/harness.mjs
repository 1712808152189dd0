// Test harness: starts one server (Mast or a real etcd) on free 127.0.0.1 ports,
// waits until it answers, and stops it again. Every wait here is bounded.
//
//   MAST_BIN=/path/to/mast   -> `mast serve ...`
//   ETCD_BIN=/path/to/etcd   -> real etcd (default: /usr/bin/etcd)
//   ETCDCTL_BIN=/path        -> etcdctl used to enable auth on etcd (default: /usr/bin/etcdctl)
//   SERVER_LOG=1             -> copy the server's output to this process' stderr
//
// startServer() options (all optional; with none it starts the plain server seeds.test.mjs uses):
//   rootPassword: 'guang'  -> auth on, user root/<password> with role root. Mast: env
//                             MAST_ROOT_PASSWORD at first start. etcd: what the seeds' container
//                             does, `etcdctl user add root:<pw>` + `etcdctl auth enable`.
//   tls: { cert, key, ca, clientCertAuth, clientCert, clientKey }  (PEM file paths)
//                          -> https client URL, --cert-file/--key-file, and with clientCertAuth
//                             --trusted-ca-file/--client-cert-auth. `ca` is also what the probe
//                             trusts; clientCert/clientKey are what the probe presents.
//   args: [...], env: {...} -> extra server arguments / environment.
//   member: { name, peerPort, initialCluster, token } -> start as one member of a new cluster
//                             (used by startCluster(), which starts every member at once).
//
// startCluster(n) starts n members of one new cluster (Mast or etcd, as above) and answers
// like startServer(), plus `hosts`: every member's client URL, for `new Etcd3({ hosts })`.

import { execFile, spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
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
const ETCDCTL_TIMEOUT_MS = 10_000;

// PIDs of the servers this process started and has not seen exit, and their data dirs.
// If this process ends before its after() hooks ran (an uncaught error, process.exit,
// Ctrl-C, the test runner stopping it), the servers are SIGKILLed by PID and the dirs
// removed, so nothing outlives the test file.
const livePids = new Set();
const liveDirs = new Set();
process.once('exit', () => {
  for (const pid of livePids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
  for (const dir of liveDirs) rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
});
for (const [signal, number] of [['SIGINT', 2], ['SIGTERM', 15], ['SIGHUP', 1]]) {
  process.once(signal, () => process.exit(128 + number)); // runs the 'exit' handler above
}

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
 * Runs etcdctl (v3 API) against `url` with the given TLS files; bounded, the child
 * is killed (by PID, SIGKILL) if it runs longer than ETCDCTL_TIMEOUT_MS.
 * Resolves with stdout; rejects with an error that carries stdout and stderr.
 */
export function etcdctl(url, args, tls) {
  const cmd = process.env.ETCDCTL_BIN || '/usr/bin/etcdctl';
  const full = [`--endpoints=${url}`, '--dial-timeout=3s', '--command-timeout=5s'];
  if (tls?.ca) full.push(`--cacert=${tls.ca}`);
  if (tls?.clientCert) full.push(`--cert=${tls.clientCert}`, `--key=${tls.clientKey}`);
  full.push(...args);
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      full,
      {
        timeout: ETCDCTL_TIMEOUT_MS,
        killSignal: 'SIGKILL',
        env: { ...process.env, ETCDCTL_API: '3' },
      },
      (err, stdout, stderr) => {
        if (err) {
          reject(new Error(`etcdctl ${args.join(' ')}: ${err.message}\nstdout: ${stdout}\nstderr: ${stderr}`));
        } else {
          resolve(stdout);
        }
      },
    );
  });
}

/** etcd3 client options for the TLS files in `tls` (undefined without TLS). */
export function tlsCredentials(tls, { withClientCert = true } = {}) {
  if (!tls) return undefined;
  const credentials = { rootCertificate: readFileSync(tls.ca) };
  if (withClientCert && tls.clientCert) {
    credentials.privateKey = readFileSync(tls.clientKey);
    credentials.certChain = readFileSync(tls.clientCert);
  }
  return credentials;
}

/**
 * Starts the server under test (options: see the top of this file).
 * Returns { url, kind, stop(), logTail(), clientOptions }: clientOptions are the etcd3
 * options (hosts, credentials, auth as root) the readiness probe connected with.
 * stop() sends SIGTERM to the child's PID, SIGKILL after 3 s, and removes the data dir.
 */
export async function startServer({
  rootPassword,
  tls,
  args: extraArgs = [],
  env: extraEnv = {},
  member,
} = {}) {
  const clientPort = await freePort();
  const scheme = tls ? 'https' : 'http';
  const url = `${scheme}://${HOST}:${clientPort}`;
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'mast-node-test-'));
  liveDirs.add(dataDir);

  const tlsArgs = [];
  if (tls) {
    tlsArgs.push('--cert-file', tls.cert, '--key-file', tls.key);
    if (tls.clientCertAuth) tlsArgs.push('--trusted-ca-file', tls.ca, '--client-cert-auth');
  }

  const name = member ? member.name : 'node-test';
  const memberArgs = [];
  if (member) {
    const peer = `http://${HOST}:${member.peerPort}`;
    memberArgs.push(
      '--listen-peer-urls', peer,
      '--initial-advertise-peer-urls', peer,
      '--initial-cluster', member.initialCluster,
      '--initial-cluster-token', member.token,
    );
  }

  let cmd;
  let args;
  let kind;
  const env = { ...process.env, ...extraEnv };
  if (process.env.MAST_BIN) {
    kind = 'mast';
    cmd = process.env.MAST_BIN;
    args = [
      'serve',
      '--name', name,
      '--data-dir', dataDir,
      '--listen-client-urls', url,
      '--advertise-client-urls', url,
      ...memberArgs,
      ...tlsArgs,
      ...extraArgs,
    ];
    if (rootPassword !== undefined) env.MAST_ROOT_PASSWORD = rootPassword;
  } else {
    kind = 'etcd';
    cmd = process.env.ETCD_BIN || '/usr/bin/etcd';
    if (!member) {
      let peerPort = await freePort();
      while (peerPort === clientPort) peerPort = await freePort();
      const peer = `http://${HOST}:${peerPort}`;
      memberArgs.push(
        '--listen-peer-urls', peer,
        '--initial-advertise-peer-urls', peer,
        '--initial-cluster', `node-test=${peer}`,
      );
    }
    args = [
      '--name', name,
      '--data-dir', dataDir,
      '--listen-client-urls', url,
      '--advertise-client-urls', url,
      ...memberArgs,
      ...tlsArgs,
      ...extraArgs,
    ];
  }

  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  if (child.pid !== undefined) livePids.add(child.pid);
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
      livePids.delete(child.pid);
      exited = { code, signal };
      resolve(exited);
    });
    child.once('error', err => {
      exited = { error: err };
      resolve(exited);
    });
  });

  // The exit status, or null after `ms`; the timer is cleared so it cannot hold the process.
  const exitedWithin = async ms => {
    const ac = new AbortController();
    try {
      return await Promise.race([
        exitPromise,
        sleep(ms, null, { signal: ac.signal }).catch(() => null),
      ]);
    } finally {
      ac.abort();
    }
  };

  const stop = async () => {
    if (exited === null && child.pid !== undefined) {
      try {
        process.kill(child.pid, 'SIGTERM');
      } catch {
        /* already gone */
      }
      const graceful = await exitedWithin(STOP_GRACE_MS);
      if (graceful === null) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
        await exitedWithin(STOP_GRACE_MS);
      }
    }
    await rm(dataDir, { recursive: true, force: true });
    liveDirs.delete(dataDir);
  };

  const describeFailure = why => {
    const err = new Error(`${kind} (${cmd}) ${why}\n--- server output (tail) ---\n${logTail}`);
    err.fatal = true; // stops waitFor at once
    return err;
  };

  const credentials = tlsCredentials(tls);
  const rootAuth = rootPassword === undefined ? undefined : { username: 'root', password: rootPassword };
  const clientOptions = { hosts: url };
  if (credentials) clientOptions.credentials = credentials;
  if (rootAuth) clientOptions.auth = rootAuth;

  // Wait until it answers: first TCP, then a real etcd3 `get` through gRPC.
  const deadline = Date.now() + START_TIMEOUT_MS;
  const left = () => Math.max(0, deadline - Date.now());
  const probeGet = async options => {
    const probe = new Etcd3(options);
    try {
      await waitFor(
        async () => {
          if (exited) throw describeFailure(`exited early: ${JSON.stringify(exited)}`);
          await withTimeout(probe.get('x').string(), Math.min(2_000, left()), 'probe get');
          return true;
        },
        left(),
        `${url} answering client.get('x')${options.auth ? ' as root' : ''}`,
        200,
      );
    } finally {
      probe.close();
    }
  };
  try {
    await waitFor(
      async () => {
        if (exited) throw describeFailure(`exited early: ${JSON.stringify(exited)}`);
        return tcpAccepts(clientPort);
      },
      left(),
      `${url} accepting TCP`,
    );
    if (kind === 'etcd' && rootAuth) {
      // etcd starts without auth: probe unauthenticated, then enable auth like the
      // seeds' container (etcdctl adds role root and grants it to root on `auth enable`).
      await probeGet({ ...clientOptions, auth: undefined });
      await withTimeout(etcdctl(url, ['user', 'add', `root:${rootPassword}`], tls), left(), 'etcdctl user add');
      await withTimeout(etcdctl(url, ['auth', 'enable'], tls), left(), 'etcdctl auth enable');
    }
    await probeGet(clientOptions);
  } catch (e) {
    await stop();
    if (e.fatal) throw e;
    throw describeFailure(`did not become ready: ${e.message}`);
  }

  return { url, kind, stop, logTail: () => logTail, clientOptions };
}

/**
 * Starts `n` members of one new cluster on free loopback ports, all at once (a member answers
 * a linearizable read only once a quorum is up), and waits until every one answers.
 * Returns { url (the first member's), hosts (every member's), kind, stop, members }.
 */
export async function startCluster(n, options = {}) {
  const peerPorts = [];
  while (peerPorts.length < n) {
    const p = await freePort();
    if (!peerPorts.includes(p)) peerPorts.push(p);
  }
  const names = peerPorts.map((_, i) => `m${i}`);
  const initialCluster = names.map((name, i) => `${name}=http://${HOST}:${peerPorts[i]}`).join(',');
  const token = `node-test-${process.pid}-${peerPorts[0]}`;
  const started = await Promise.allSettled(
    names.map((name, i) =>
      startServer({ ...options, member: { name, peerPort: peerPorts[i], initialCluster, token } }),
    ),
  );
  const members = started.filter(s => s.status === 'fulfilled').map(s => s.value);
  const stop = async () => {
    await Promise.all(members.map(m => m.stop()));
  };
  const failed = started.find(s => s.status === 'rejected');
  if (failed) {
    await stop();
    throw failed.reason;
  }
  const hosts = members.map(m => m.url);
  return { url: hosts[0], hosts, kind: members[0].kind, stop, members };
}
