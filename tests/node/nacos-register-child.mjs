// Registers ephemeral instances with the npm `nacos-naming` client and keeps beating until it
// is killed: the process whose death nacos-naming.test.mjs watches for. Arguments: the Nacos
// address, the group, the service, then ip:port pairs. Prints "registered" once every instance
// is in.
import { NacosNamingClient } from 'nacos-naming';

const [serverList, group, service, ...addrs] = process.argv.slice(2);
const quiet = { info() {}, warn() {}, error() {}, debug() {} };
const client = new NacosNamingClient({ logger: quiet, serverList, namespace: 'public' });
await client.ready();
for (const addr of addrs) {
  const [ip, port] = addr.split(':');
  await client.registerInstance(service, {
    ip,
    port: Number(port),
    // Short timeouts (Nacos's instance metadata keys), so its death shows within seconds.
    metadata: {
      'preserved.heart.beat.interval': '500',
      'preserved.heart.beat.timeout': '2000',
      'preserved.ip.delete.timeout': '3000',
    },
  }, group);
}
process.stdout.write('registered\n');
// Beats run on the client's timers until this process is killed.
