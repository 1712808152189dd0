// The seeds' Node flows (/work/shared/seeds/002: "用Etcd实现微服务配置中心和注册中心") as one
// runnable script: saveConfig / getConfig / deleteConfig, then registerService /
// discoverService / watchService with a third instance joining and one leaving.
//
//   target/debug/mast serve --data-dir /tmp/mast-demo &      # or any etcd v3 server
//   cd examples/node && npm install && node seeds.mjs         # or: node examples/node/seeds.mjs
//
// Without `npm install` here it uses tests/node's etcd3 (run `npm ci` in tests/node once).
// Server: MAST_ENDPOINTS (comma-separated), else http://127.0.0.1:2379; auth: MAST_USER and
// MAST_PASSWORD when set (the seeds use root/guang on their docker image). Exits by itself
// within ~15 s (exit code 1 if a step did not happen in time).

import { createRequire } from 'node:module';
import { setTimeout as sleep } from 'node:timers/promises';

function loadEtcd3() {
  for (const base of ['./package.json', '../../tests/node/package.json']) {
    try {
      return createRequire(new URL(base, import.meta.url))('etcd3');
    } catch {
      /* try the next place */
    }
  }
  throw new Error('etcd3 not found: run `npm install` in examples/node (or `npm ci` in tests/node)');
}
const { Etcd3 } = loadEtcd3();

const hosts = (process.env.MAST_ENDPOINTS || 'http://127.0.0.1:2379').split(',').map(s => s.trim());
const auth = process.env.MAST_USER
  ? { username: process.env.MAST_USER, password: process.env.MAST_PASSWORD || '' }
  : undefined;

// Never hang: whatever happens, leave within 15 s.
setTimeout(() => {
  console.error('seeds.mjs: not done within 15 s; exiting');
  process.exit(1);
}, 15_000).unref();

const client = new Etcd3({ hosts, auth });
const leases = [];

// ---- Config center (seed 002) ----

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

// ---- Service registry (seed 002) ----

// 服务注册
async function registerService(serviceName, instanceId, metadata) {
  const key = `/services/${serviceName}/${instanceId}`;
  const lease = client.lease(10);
  leases.push(lease);
  await lease.put(key).value(JSON.stringify(metadata));
  lease.on('lost', async () => {
    console.log('租约过期，重新注册...');
    await registerService(serviceName, instanceId, metadata);
  });
}

// 服务发现
async function discoverService(serviceName) {
  const instances = await client.getAll().prefix(`/services/${serviceName}`).strings();
  return Object.entries(instances).map(([key, value]) => JSON.parse(value));
}

// 监听服务变更
async function watchService(serviceName, callback) {
  const watcher = await client.watch().prefix(`/services/${serviceName}`).create();
  watcher
    .on('put', async event => {
      console.log('新的服务节点添加:', event.key.toString());
      callback(await discoverService(serviceName));
    })
    .on('delete', async event => {
      console.log('服务节点删除:', event.key.toString());
      callback(await discoverService(serviceName));
    });
  return watcher;
}

/** Polls `check` every 100 ms until it is truthy; throws after `ms`. */
async function waitFor(check, ms, what) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(100);
  }
  throw new Error(`not within ${ms} ms: ${what}`);
}

async function main() {
  // Config center.
  await saveConfig('config-key', 'config-value');
  console.log('Config value:', await getConfig('config-key'));
  await deleteConfig('config-key');
  console.log('Config value after delete:', await getConfig('config-key'));

  // Registry.
  const serviceName = 'my_service';
  await registerService(serviceName, 'instance_1', { host: 'localhost', port: 3000 });
  await registerService(serviceName, 'instance_2', { host: 'localhost', port: 3002 });
  console.log('All instances:', await discoverService(serviceName));

  let latest = null;
  const watcher = await watchService(serviceName, updatedInstances => {
    latest = updatedInstances;
    console.log('Updated instances:', updatedInstances);
  });
  const ports = () => (latest ?? []).map(i => i.port).sort((a, b) => a - b).join(',');

  // A third instance joins (the seed waits 5 s first) ...
  await registerService(serviceName, 'instance_3', { host: 'localhost', port: 3004 });
  await waitFor(() => ports() === '3000,3002,3004', 5_000, 'the watcher sees instance_3');
  // ... and instance_2 leaves (`etcdctl del /services/my_service/instance_2` in the seed).
  await client.delete().key(`/services/${serviceName}/instance_2`);
  await waitFor(() => ports() === '3000,3004', 5_000, 'the watcher sees instance_2 leave');

  // Clean up: stop watching, deregister (revoking a lease deletes its keys), disconnect.
  await watcher.cancel();
  for (const lease of leases) {
    await lease.revoke().catch(() => {});
  }
  console.log('Instances after deregistering:', await discoverService(serviceName));
  client.close();
}

main().then(
  () => process.exit(0),
  err => {
    console.error('seeds.mjs failed:', err.message);
    process.exit(1);
  },
);
