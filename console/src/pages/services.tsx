// Services: each service with its instance and healthy counts and protection threshold; a
// service's instances with weight / enabled edits that stick (stored as an operator override,
// so a re-registering instance does not undo them) and the override cleared on demand.
import { useState } from 'preact/hooks';
import { mast, seg } from '../api';
import { may, type Session } from '../session';
import { ErrorLine, useLoad, when } from '../components';

interface ServiceSummary {
  name: string;
  instances: number;
  healthyInstances: number;
  availableInstances?: number;
}
interface Instance {
  id: string;
  host: string;
  port: number;
  weight?: number;
  enabled?: boolean;
  healthy?: boolean;
  healthDetail?: string;
  ephemeral?: boolean;
  metadata?: Record<string, string>;
  registeredAt?: number;
  ttl?: number;
  /** Fields Mast does not model itself; an operator override keeps the instance's own
   *  values here as `registered: {weight, enabled}`. */
  extra?: { registered?: { weight?: number; enabled?: boolean }; healthDetail?: string };
}

/** A service's key segment read back as Nacos names it: `<namespace>#<group>@@<name>`,
 *  `<group>@@<name>` (public namespace) or `<name>` (public, DEFAULT_GROUP). */
function names(segment: string): { namespace: string; group: string; name: string } {
  const [nsPart, rest] = segment.includes('#') ? segment.split('#', 2) : ['public', segment];
  const at = rest.indexOf('@@');
  return at >= 0
    ? { namespace: nsPart, group: rest.slice(0, at), name: rest.slice(at + 2) }
    : { namespace: nsPart, group: 'DEFAULT_GROUP', name: rest };
}

function List() {
  const [list, error] = useLoad(() => mast<{ services: ServiceSummary[] }>('GET', '/services'), []);
  const [filter, setFilter] = useState('');
  const [ns, setNs] = useState('');
  const all = (list?.services ?? []).map((s) => ({ ...s, ...names(s.name), segment: s.name }));
  const namespaces = [...new Set(all.map((s) => s.namespace))].sort();
  const shown = all.filter((s) => (!ns || s.namespace === ns) && (!filter || s.segment.includes(filter)));
  return (
    <section aria-labelledby="services-title">
      <h1 id="services-title">Services</h1>
      <div class="inline">
        <label>
          Namespace{' '}
          <select aria-label="Namespace" value={ns} onChange={(e) => setNs((e.target as HTMLSelectElement).value)}>
            <option value="">all</option>
            {namespaces.map((n) => (
              <option value={n}>{n}</option>
            ))}
          </select>
        </label>
        <label>
          Filter <input value={filter} onInput={(e) => setFilter((e.target as HTMLInputElement).value)} />
        </label>
      </div>
      <ErrorLine error={error} />
      <div class="table-wrap" tabIndex={0} role="region" aria-label="Scrollable table">
        <table>
          <thead>
            <tr>
              <th scope="col">Service</th>
              <th scope="col">Group</th>
              <th scope="col">Namespace</th>
              <th scope="col">Instances</th>
              <th scope="col">Healthy</th>
              <th scope="col">Available</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((s) => (
              <tr key={s.segment}>
                <td>
                  <a href={`#/services/${seg(s.segment)}`}>{s.name}</a>
                </td>
                <td>{s.group}</td>
                <td>{s.namespace}</td>
                <td>{s.instances}</td>
                <td class={s.healthyInstances < s.instances ? 'bad' : ''}>{s.healthyInstances}</td>
                <td>{s.availableInstances ?? ''}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {list && list.services.length === 0 && <p class="hint">No services registered.</p>}
    </section>
  );
}

function metadataText(m: Record<string, string>): string {
  return Object.entries(m)
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');
}

/** The PATCH body's metadata for going from `now` to the `k=v, …` in `text`: changed and new
 *  entries with their values, removed ones as null. */
function metadataPatch(now: Record<string, string>, text: string): Record<string, string | null> {
  const want: Record<string, string> = {};
  for (const part of text.split(',')) {
    const i = part.indexOf('=');
    if (i > 0) want[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  const out: Record<string, string | null> = {};
  for (const [k, v] of Object.entries(want)) if (now[k] !== v) out[k] = v;
  for (const k of Object.keys(now)) if (!(k in want)) out[k] = null;
  return out;
}

function Row(props: { service: string; inst: Instance; writable: boolean; onChanged: () => void }) {
  const { inst, service } = props;
  const [weight, setWeight] = useState(String(inst.weight ?? 1));
  const [err, setErr] = useState<unknown>();
  const registered = inst.extra?.registered;
  const overridden = registered !== undefined;
  const detail = inst.healthDetail ?? inst.extra?.healthDetail;
  const base = `/services/${seg(service)}/instances/${seg(inst.id)}`;
  async function patch(body: object) {
    setErr(undefined);
    try {
      await mast('PATCH', base, body);
      props.onChanged();
    } catch (e) {
      setErr(e);
    }
  }
  async function clear() {
    try {
      await mast('DELETE', `${base}/override`);
      props.onChanged();
    } catch (e) {
      setErr(e);
    }
  }
  return (
    <tr>
      <td>
        <code>{inst.id}</code>
      </td>
      <td>
        {inst.host}:{inst.port}
      </td>
      <td>
        <span class={`tag ${inst.healthy === false ? 'bad' : 'good'}`} title={detail}>
          {inst.healthy === false ? 'unhealthy' : 'healthy'}
        </span>
      </td>
      <td>
        {props.writable ? (
          <form
            class="inline"
            onSubmit={(e) => {
              e.preventDefault();
              patch({ weight: Number(weight) });
            }}
          >
            <input
              type="number"
              min="0"
              step="any"
              value={weight}
              aria-label={`Weight of ${inst.id}`}
              onInput={(e) => setWeight((e.target as HTMLInputElement).value)}
              class="narrow"
            />
            <button type="submit" class="ghost">
              Set
            </button>
          </form>
        ) : (
          inst.weight
        )}
      </td>
      <td>
        {props.writable ? (
          <input
            type="checkbox"
            checked={inst.enabled !== false}
            aria-label={`${inst.id} enabled`}
            onChange={(e) => patch({ enabled: (e.target as HTMLInputElement).checked })}
          />
        ) : inst.enabled === false ? (
          'no'
        ) : (
          'yes'
        )}
      </td>
      <td>{inst.ephemeral === false ? 'persistent' : `ephemeral${inst.ttl ? ` (TTL ${inst.ttl} s)` : ''}`}</td>
      <td>
        {props.writable ? (
          <form
            class="inline"
            onSubmit={(e) => {
              e.preventDefault();
              patch({ metadata: metadataPatch(inst.metadata ?? {}, String(new FormData(e.target as HTMLFormElement).get('metadata'))) });
            }}
          >
            <input name="metadata" defaultValue={metadataText(inst.metadata ?? {})} aria-label={`Metadata of ${inst.id}`} placeholder="key=value, …" />
            <button type="submit" class="ghost">
              Save
            </button>
          </form>
        ) : (
          metadataText(inst.metadata ?? {})
        )}
      </td>
      <td>
        {overridden && (
          <>
            <span class="tag" title={`registered with weight ${registered?.weight}, ${registered?.enabled === false ? 'disabled' : 'enabled'}`}>
              operator override
            </span>
            {props.writable && (
              <button type="button" class="ghost" onClick={clear}>
                Clear
              </button>
            )}
          </>
        )}
        <ErrorLine error={err} />
      </td>
      <td>{when(inst.registeredAt)}</td>
    </tr>
  );
}

function Detail(props: { session: Session; service: string }) {
  const s = props.service;
  const [n, setN] = useState(0);
  const [list, error] = useLoad(
    () => mast<{ instances: Instance[]; protectionThresholdReached?: boolean }>('GET', `/services/${seg(s)}/instances`),
    [s, n],
  );
  const [settings] = useLoad(() => mast<{ protectThreshold?: number }>('GET', `/services/${seg(s)}`).catch(() => null), [s]);
  const writable = may(props.session, 'write', `/services/${s}/`) || may(props.session, 'write', `/instance-overrides/${s}/`);
  return (
    <section aria-labelledby="service-title">
      <p>
        <a href="#/services">← Services</a>
      </p>
      <h1 id="service-title">
        {names(s).name} <span class="sub">{names(s).namespace} / {names(s).group}</span>
      </h1>
      <p class="meta">
        Protection threshold {settings?.protectThreshold ?? 0}
        {list?.protectionThresholdReached && <strong class="bad"> · reached: discovery answers every instance</strong>}
      </p>
      <ErrorLine error={error} />
      <div class="table-wrap" tabIndex={0} role="region" aria-label="Scrollable table">
        <table>
          <thead>
            <tr>
              <th scope="col">Instance</th>
              <th scope="col">Address</th>
              <th scope="col">Health</th>
              <th scope="col">Weight</th>
              <th scope="col">Enabled</th>
              <th scope="col">Kind</th>
              <th scope="col">Metadata</th>
              <th scope="col">Override</th>
              <th scope="col">Registered</th>
            </tr>
          </thead>
          <tbody>
            {(list?.instances ?? []).map((i) => (
              <Row key={`${i.id}-${i.weight}-${i.enabled}-${metadataText(i.metadata ?? {})}`} service={s} inst={i} writable={writable} onChanged={() => setN((x) => x + 1)} />
            ))}
          </tbody>
        </table>
      </div>
      <Watchers service={s} />
    </section>
  );
}

interface Watcher {
  kind: string;
  key: string;
  rangeEnd: string;
  address: string;
  user: string;
  sinceMs: number;
}

const KINDS: Record<string, string> = {
  etcd: 'etcd watch (gRPC)',
  'etcd-http': 'etcd watch (JSON gateway)',
  mast: '/mast/v1 event stream',
  'nacos-grpc': 'Nacos 2.x subscriber',
};

/** Who watches the service on the member the console talks to. */
function Watchers(props: { service: string }) {
  const [list, error, reload] = useLoad(
    () => mast<{ member: string; watchers: Watcher[] }>('GET', `/services/${seg(props.service)}/watchers`),
    [props.service],
  );
  return (
    <section aria-labelledby="watchers-title">
      <h2 id="watchers-title">Who watches it</h2>
      <ErrorLine error={error} />
      {list && (
        <p class="hint">
          Clients of member {list.member} ({list.watchers.length}){' '}
          <button type="button" class="ghost" onClick={reload}>
            Refresh
          </button>
        </p>
      )}
      {list && list.watchers.length > 0 && (
        <div class="table-wrap" tabIndex={0} role="region" aria-label="Scrollable table">
          <table data-testid="watchers">
            <thead>
              <tr>
                <th scope="col">Client</th>
                <th scope="col">Through</th>
                <th scope="col">Watching</th>
                <th scope="col">User</th>
                <th scope="col">Since</th>
              </tr>
            </thead>
            <tbody>
              {list.watchers.map((w, i) => (
                <tr key={i}>
                  <td>{w.address}</td>
                  <td>{KINDS[w.kind] ?? w.kind}</td>
                  <td>
                    <code>
                      {w.key}
                      {w.rangeEnd === '\0' ? ' and after' : w.rangeEnd ? ` … ${w.rangeEnd}` : ''}
                    </code>
                  </td>
                  <td>{w.user}</td>
                  <td>{when(w.sinceMs)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

export function Services(props: { session: Session; path: string[] }) {
  if (props.path[0]) return <Detail session={props.session} service={props.path.join('/')} />;
  return <List />;
}
