// Events: one live stream of every change the user may watch — key puts and deletes,
// instances up and down, config publishes — named by what the key is, filterable, and
// resumable from a revision (etcd's watch from `start_revision`).
import { useEffect, useState } from 'preact/hooks';
import { b64, gwStream, prefixEnd, unb64 } from '../api';
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
function classify(type: 'PUT' | 'DELETE', key: string, created: boolean): [string, string] {
  const p = key.split('/');
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
    gwStream(
      '/v3/watch',
      { create_request: create },
      (m) => {
        if (m.error) {
          setError(new Error(m.error.message));
          return;
        }
        if (m.result?.compact_revision && m.result.compact_revision !== '0') {
          setError(new Error(`revision ${from} is compacted; the oldest kept is ${m.result.compact_revision}`));
          return;
        }
        const evs: Ev[] = (m.result?.events ?? []).map((e: any) => {
          const type = (e.type ?? 'PUT') as 'PUT' | 'DELETE';
          const key = unb64(e.kv?.key);
          const [kind, what] = classify(type, key, e.kv?.version === '1');
          return { rev: e.kv?.mod_revision ?? '', type, key, kind, what };
        });
        if (evs.length) setEvents((old) => [...evs.reverse(), ...old].slice(0, KEEP));
      },
      ac.signal,
    ).catch((e) => !ac.signal.aborted && setError(e));
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
