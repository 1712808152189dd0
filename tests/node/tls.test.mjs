// The etcd3 npm package over TLS: `credentials: { rootCertificate }` against a server
// started with --cert-file/--key-file on an https client URL, and `credentials:
// { rootCertificate, privateKey, certChain }` against one that also has
// --trusted-ca-file/--client-cert-auth. Mast when MAST_BIN is set, otherwise a real
// etcd 3.4 (same flags).
//
// A throwaway CA, a server certificate (SAN IP:127.0.0.1 and DNS:localhost) and client
// certificates are made at test time with the openssl command line in a temp dir that
// after() removes. No key is ever written into the repository. Without openssl
// (OPENSSL_BIN, default `openssl`) every test here is skipped with a message.
//
//   cd tests/node && node --test tls.test.mjs                           # real etcd 3.4
//   cd tests/node && MAST_BIN=../../target/debug/mast node --test tls.test.mjs

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Etcd3, GRPCUnavailableError } from 'etcd3';
import { startServer, waitFor, withTimeout } from './harness.mjs';

const TEST_TIMEOUT_MS = 20_000;
const EVENT_WAIT_MS = 10_000;
const CALL_MS = 5_000;
const OPENSSL = process.env.OPENSSL_BIN || 'openssl';
const OPENSSL_TIMEOUT_MS = 20_000;

/** Runs `cmd args` bounded by OPENSSL_TIMEOUT_MS (SIGKILL by PID on timeout). */
function run(cmd, args, cwd) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd, timeout: OPENSSL_TIMEOUT_MS, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

// Decided before the tests are declared, so they can be skipped with the reason.
const skip = await run(OPENSSL, ['version']).then(
  () => false,
  e => `openssl command line not available (${e.message.split('\n')[0]}); TLS tests skipped`,
);
if (skip) process.stderr.write(`tls.test.mjs: ${skip}\n`);

/**
 * Makes, in `dir`: ca.pem (CA), server.pem + server-key.pem (SAN IP:127.0.0.1,
 * DNS:localhost; serverAuth and clientAuth, as etcd's own docs make them), client.pem +
 * client-key.pem, and other-ca.pem + other-client.pem/-key.pem from an unrelated CA.
 * RSA 2048, valid one day.
 */
async function makeCerts(dir) {
  const f = name => path.join(dir, name);
  const caConf = cn => `[req]
distinguished_name = dn
prompt = no
[dn]
CN = ${cn}
[ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
`;
  await writeFile(f('ca.cnf'), caConf('mast-node-test-ca'));
  await writeFile(f('other-ca.cnf'), caConf('mast-node-test-other-ca'));
  await writeFile(
    f('server.ext'),
    `basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
authorityKeyIdentifier = keyid
`,
  );
  await writeFile(
    f('client.ext'),
    `basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
`,
  );
  const ca = async name =>
    run(OPENSSL, ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}-key.pem`, '-out', `${name}.pem`,
      '-days', '1', '-config', `${name}.cnf`, '-extensions', 'ext'], dir);
  const leaf = async (name, cn, caName, ext) => {
    await run(OPENSSL, ['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}-key.pem`, '-out', `${name}.csr`,
      '-subj', `/CN=${cn}`], dir);
    await run(OPENSSL, ['x509', '-req', '-in', `${name}.csr`, '-CA', `${caName}.pem`, '-CAkey', `${caName}-key.pem`,
      '-CAcreateserial', '-out', `${name}.pem`, '-days', '1', '-extfile', ext], dir);
  };
  await Promise.all([ca('ca'), ca('other-ca')]);
  await Promise.all([
    leaf('server', '127.0.0.1', 'ca', 'server.ext'),
    leaf('client', 'node-test-client', 'ca', 'client.ext'),
    leaf('other-client', 'node-test-client', 'other-ca', 'client.ext'),
  ]);
  await run(OPENSSL, ['verify', '-CAfile', 'ca.pem', 'server.pem', 'client.pem'], dir);
  return {
    ca: f('ca.pem'),
    cert: f('server.pem'),
    key: f('server-key.pem'),
    clientCert: f('client.pem'),
    clientKey: f('client-key.pem'),
    otherClientCert: f('other-client.pem'),
    otherClientKey: f('other-client-key.pem'),
  };
}

let dir;
let certs;
let tlsServer; // --cert-file/--key-file
let mtlsServer; // ... plus --trusted-ca-file/--client-cert-auth

before(async () => {
  if (skip) return;
  dir = await mkdtemp(path.join(os.tmpdir(), 'mast-node-tls-'));
  certs = await makeCerts(dir);
  const started = await Promise.allSettled([
    startServer({ tls: { ca: certs.ca, cert: certs.cert, key: certs.key } }),
    startServer({ tls: { ...certs, clientCertAuth: true } }),
  ]);
  [tlsServer, mtlsServer] = started.map(r => (r.status === 'fulfilled' ? r.value : undefined));
  const failed = started.find(r => r.status === 'rejected');
  if (failed) throw failed.reason; // after() still stops the one that started
});

after(async () => {
  await Promise.all([tlsServer?.stop(), mtlsServer?.stop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
  setTimeout(() => {
    process.stderr.write('tls.test.mjs: handles still open 5 s after the last test; exiting\n');
    process.exit(process.exitCode ?? 0);
  }, 5_000).unref();
});

/** Per-test clients and watchers, cancelled/closed after the test. */
function scope(t) {
  const clients = [];
  const watchers = [];
  t.after(async () => {
    for (const w of watchers) await withTimeout(w.cancel(), 3_000, 'watcher.cancel()').catch(() => {});
    for (const c of clients) c.close();
  });
  return {
    client(options) {
      const c = new Etcd3(options);
      clients.push(c);
      return c;
    },
    watcher(w) {
      watchers.push(w);
      return w;
    },
  };
}

const caOnly = () => ({ rootCertificate: readFileSync(certs.ca) });
const withClientCert = (cert = certs.clientCert, key = certs.clientKey) => ({
  rootCertificate: readFileSync(certs.ca),
  privateKey: readFileSync(key),
  certChain: readFileSync(cert),
});

/** put/get/delete and a watch that sees them, through `client`. */
async function putGetWatch(s, client, key) {
  const watcher = s.watcher(await withTimeout(client.watch().key(key).create(), CALL_MS, 'watch create'));
  const seen = [];
  watcher.on('put', kv => seen.push(['put', kv.value.toString()])).on('delete', () => seen.push(['delete']));
  await client.put(key).value('over-tls');
  assert.equal(await client.get(key).string(), 'over-tls');
  await client.delete().key(key);
  assert.equal(await client.get(key).string(), null);
  await waitFor(() => seen.length >= 2, EVENT_WAIT_MS, 'watch: put and delete');
  assert.deepEqual(seen, [['put', 'over-tls'], ['delete']]);
}

/**
 * The first call of a client the server refuses during the TLS handshake: etcd3 raises
 * GRPCUnavailableError "14 UNAVAILABLE: No connection established. Last error: ...".
 * Returns the message; the TLS alert in it is the server's TLS stack's choice.
 */
async function refused(t, client, what) {
  let message;
  await assert.rejects(withTimeout(client.get('k').string(), CALL_MS, what), err => {
    assert.ok(err instanceof GRPCUnavailableError, `${what}: ${err.constructor.name}: ${err.message}`);
    assert.match(err.message, /^14 UNAVAILABLE: No connection established\. Last error: /);
    message = err.message;
    return true;
  });
  t.diagnostic(`${what}: ${message.split('\n')[0]}`);
  return message;
}

/**
 * etcd 3.4 (Go's crypto/tls) refuses a missing or untrusted client certificate with TLS
 * alert 42 "bad certificate". The alert is the TLS stack's choice and the client sees
 * the same etcd3 error class either way, so this check is a `todo` subtest: it is
 * reported ("# TODO") but does not fail the file. Mast (rustls) sends 116 "certificate
 * required" (no certificate, TLS 1.3) and 48 "unknown ca" (another CA).
 */
async function etcdAlert(t, message) {
  await t.test("TLS alert is etcd 3.4's: 42 bad certificate", { todo: 'alert differs between TLS stacks' }, () => {
    assert.match(message, /sslv3 alert bad certificate:.*SSL alert number 42$/m);
  });
}

test('a. https: a client trusting the CA does put/get and a watch', { skip, timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  assert.match(tlsServer.url, /^https:\/\/127\.0\.0\.1:\d+$/);
  const client = s.client({ hosts: tlsServer.url, credentials: caOnly() });
  await putGetWatch(s, client, 'tls/key');
  // The certificate also names localhost: checked against that name, still dialling
  // 127.0.0.1 (a `localhost` URL could go to ::1).
  const byName = s.client({
    hosts: tlsServer.url,
    credentials: caOnly(),
    grpcOptions: { 'grpc.ssl_target_name_override': 'localhost' },
  });
  await byName.put('tls/by-name').value('ok');
  assert.equal(await byName.get('tls/by-name').string(), 'ok');
  // A lease with keepalives over TLS (the seeds' registerService).
  const lease = client.lease(10);
  await lease.put('/services/tls/instance_1').value('{"port":3000}');
  assert.deepEqual(await client.getAll().prefix('/services/tls').strings(), { '/services/tls/instance_1': '{"port":3000}' });
  await lease.revoke();
  assert.equal(await client.get('/services/tls/instance_1').string(), null);
});

test('b. https: refused without the CA, and over plain http', { skip, timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  // No credentials but an https URL: etcd3 uses the system roots, which do not know our CA.
  const message = await refused(t, s.client({ hosts: tlsServer.url }), 'system roots');
  assert.match(message, /unable to verify the first certificate/);
  // http:// to the TLS port.
  await refused(t, s.client({ hosts: tlsServer.url.replace('https:', 'http:') }), 'plain http');
});

test('c. client-cert-auth: refused without a client certificate', { skip, timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const message = await refused(t, s.client({ hosts: mtlsServer.url, credentials: caOnly() }), 'no client certificate');
  await etcdAlert(t, message);
});

test('d. client-cert-auth: works with rootCertificate, privateKey, certChain', { skip, timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const client = s.client({ hosts: mtlsServer.url, credentials: withClientCert() });
  await putGetWatch(s, client, 'mtls/key');
  const lease = client.lease(10);
  await lease.put('/services/mtls/instance_1').value('{"port":3000}');
  assert.equal(await client.get('/services/mtls/instance_1').string(), '{"port":3000}');
  await lease.revoke();
  assert.equal(await client.get('/services/mtls/instance_1').string(), null);
});

test('e. client-cert-auth: refused with a certificate from another CA', { skip, timeout: TEST_TIMEOUT_MS }, async t => {
  const s = scope(t);
  const client = s.client({
    hosts: mtlsServer.url,
    credentials: withClientCert(certs.otherClientCert, certs.otherClientKey),
  });
  const message = await refused(t, client, 'client certificate from another CA');
  await etcdAlert(t, message);
});
