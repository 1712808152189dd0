// Events: one live stream of every change the user may watch — key puts and deletes,
// instances up and down, config publishes — named by what the key is, filterable, and
// resumable from a revision (etcd's watch from `start_revision`).
import { useEffect, useState } from 'preact/hooks';
import { ApiError, b64, gwStream, mast, prefixEnd, seg, unb64 } from '../api';
import { readablePrefixes, type Session } from '../session';
import { ErrorLine } from '../components';

interface Ev {
  rev: string;
  type: 'PUT' | 'DELETE';
  key: string;
  kind: string;
  what: string;
}

const KEEP = 500;

/** What a change is, from its key (the data model in ARCHITECTURE.md). */
function classify(type: 'PUT' | 'DELETE', key: string, created: boolean, lease: { id: string; cause: string } | null): [string, string] {
  const p = key.split('/');
  if (lease) {
    const what = key.startsWith('/services/') ? `${p[2]} / ${p.slice(3).join('/')} down` : `delete ${key}`;
    return [key.startsWith('/services/') ? 'instance' : 'key', `${what} (lease ${lease.id} ${lease.cause})`];
  }
  if (key.startsWith('/services/')) return ['instance', `${p[2]} / ${p.slice(3).join('/')} ${type === 'PUT' ? (created ? 'up' : 'changed') : 'down'}`];
  if (key.startsWith('/configs/')) return ['config', `${p.slice(2, 4).join(' / ')} / ${p.slice(4).join('/')} ${type === 'PUT' ? 'published' : 'deleted'}`];
  if (key.startsWith('/config-') || key.startsWith('/instance-overrides/')) return ['meta', `${type === 'PUT' ? 'put' : 'delete'} ${key}`];
  return ['key', `${type === 'PUT' ? 'put' : 'delete'} ${key}`];
}

export function Events(props: { session: Session; query: URLSearchParams }) {
  const roots = readablePrefixes(props.session);
  const [prefix, setPrefix] = useState(props.query.get('prefix') ?? (roots.length === 1 ? roots[0] : ''));
  const [from, setFrom] = useState(props.query.get('revision') ?? '');
  const [filter, setFilter] = useState('');
  const [kinds, setKinds] = useState<Record<string, boolean>>({ key: true, instance: true, config: true, meta: false });
  const [events, setEvents] = useState<Ev[]>([]);
  const [error, setError] = useState<unknown>();
  const [run, setRun] = useState(0);

  useEffect(() => {
    const ac = new AbortController();
    setEvents([]);
    setError(undefined);
    const create: Record<string, unknown> = {
      key: b64(prefix || '\0'),
      range_end: prefix ? prefixEnd(prefix) : b64('\0'),
    };
    if (from) create.start_revision = from;
    // prev_kv: a delete then names the lease its key was on.
    create.prev_kv = true;
    /**
     * How lease `id` ended, when it ended at revision `rev` (the key's deletion): `expired`,
     * `revoked`, `ended` when the member no longer knows which, or null when the key went
     * some other way (deleted by a client while the lease lived on, or before it ended).
     */
    const leaseEnd = async (id: string, rev: string): Promise<string | null> => {
      try {
        const r = await mast<{ alive: boolean; ended?: { revision: number; cause: string } }>('GET', `/leases/${seg(id)}`);
        if (r.alive || !r.ended) return null;
        return String(r.ended.revision) === rev ? r.ended.cause : null;
      } catch (e) {
        // 404: gone, and this member does not remember how (a restart, or long ago).
        return e instanceof ApiError && e.status === 404 ? 'ended' : null;
      }
    };
    // Messages are handled one after another, so the list keeps the watch's order.
    let chain = Promise.resolve();
    gwStream(
      '/v3/watch',
      { create_request: create },
      (m) => {
        chain = chain.then(() => handle(m));
      },
      ac.signal,
    ).catch((e) => !ac.signal.aborted && setError(e));
    async function handle(m: any) {
      if (ac.signal.aborted) return;
      if (m.error) {
        setError(new Error(m.error.message));
        return;
      }
      if (m.result?.compact_revision && m.result.compact_revision !== '0') {
        setError(new Error(`revision ${from} is compacted; the oldest kept is ${m.result.compact_revision}`));
        return;
      }
      const evs: Ev[] = [];
      for (const e of m.result?.events ?? []) {
        const type = (e.type ?? 'PUT') as 'PUT' | 'DELETE';
        const key = unb64(e.kv?.key);
        // A deleted key that was on a lease which has ended went with its lease.
        const leaseId: string | undefined = e.prev_kv?.lease;
        const cause = type === 'DELETE' && leaseId && leaseId !== '0' ? await leaseEnd(leaseId, e.kv?.mod_revision ?? '') : null;
        const lease = cause ? { id: BigInt(leaseId!).toString(16), cause } : null;
        const [kind, what] = classify(type, key, e.kv?.version === '1', lease);
        evs.push({ rev: e.kv?.mod_revision ?? '', type, key, kind, what });
      }
      if (evs.length && !ac.signal.aborted) setEvents((old) => [...evs.reverse(), ...old].slice(0, KEEP));
    }
    return () => ac.abort();
  }, [prefix, from, run]);

  const shown = events.filter((e) => kinds[e.kind] && (!filter || e.key.includes(filter) || e.what.includes(filter)));
  return (
    <section aria-labelledby="events-title">
      <h1 id="events-title">Events</h1>
      <form
        class="inline"
        key={`${prefix}|${from}`}
        onSubmit={(e) => {
          e.preventDefault();
          const f = new FormData(e.target as HTMLFormElement);
          setPrefix(String(f.get('prefix') ?? ''));
          setFrom(String(f.get('revision') ?? '').trim());
          setRun((x) => x + 1);
        }}
      >
        <label>
          Prefix <input name="prefix" defaultValue={prefix} />
        </label>
        <label>
          From revision <input name="revision" defaultValue={from} inputMode="numeric" pattern="[0-9]*" placeholder="now" class="narrow" />
        </label>
        <button type="submit">Watch</button>
      </form>
      <fieldset class="inline">
        <legend>Show</legend>
        {Object.keys(kinds).map((k) => (
          <label key={k}>
            <input type="checkbox" checked={kinds[k]} onChange={(e) => setKinds({ ...kinds, [k]: (e.target as HTMLInputElement).checked })} /> {k}
          </label>
        ))}
        <label>
          Filter <input value={filter} onInput={(e) => setFilter((e.target as HTMLInputElement).value)} />
        </label>
      </fieldset>
      <ErrorLine error={error} />
      <div class="table-wrap" tabIndex={0} role="region" aria-label="Scrollable table">
        <table aria-live="polite" data-testid="events">
          <thead>
            <tr>
              <th scope="col">Revision</th>
              <th scope="col">Kind</th>
              <th scope="col">Change</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((e, i) => (
              <tr key={`${e.rev}-${e.key}-${i}`}>
                <td>{e.rev}</td>
                <td>
                  <span class={`tag ${e.type.toLowerCase()}`}>{e.kind}</span>
                </td>
                <td>{e.what}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {events.length === 0 && !error && <p class="hint">Waiting for changes…</p>}
    </section>
  );
}
