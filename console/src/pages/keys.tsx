// Keys: the key space as a tree of `/`-separated levels, a key's value (JSON / YAML
// highlighted), its earlier revisions with a diff against the current one, put and delete, its
// lease (TTL counting down, attached keys), and a live tail of the watched prefix.
import { useEffect, useRef, useState } from 'preact/hooks';
import { b64, gw, gwStream, prefixEnd, unb64, type KeyValue } from '../api';
import { may, readablePrefixes, type Session } from '../session';
import { Code, Diff, ErrorLine, useLoad } from '../components';
import { guessFormat } from '../editor';

const PAGE = 500;

function go(prefix: string, key?: string) {
  const q = new URLSearchParams({ prefix });
  if (key !== undefined) q.set('key', key);
  location.hash = `#/keys?${q}`;
}

/** The children of `prefix` among `keys`: sub-levels (ending in `/`) and keys. */
function level(prefix: string, keys: string[]): { dirs: string[]; leaves: string[] } {
  const dirs = new Set<string>();
  const leaves: string[] = [];
  for (const k of keys) {
    const rest = k.slice(prefix.length);
    const i = rest.indexOf('/', rest.startsWith('/') ? 1 : 0);
    if (i >= 0 && i < rest.length - 1) dirs.add(prefix + rest.slice(0, i + 1));
    else leaves.push(k);
  }
  return { dirs: [...dirs], leaves };
}

function Lease(props: { id: string }) {
  const [info, error] = useLoad(
    () => gw<{ TTL?: string; grantedTTL?: string; keys?: string[] }>('/v3/lease/timetolive', { ID: props.id, keys: true }),
    [props.id],
  );
  const [left, setLeft] = useState<number | null>(null);
  useEffect(() => {
    if (!info) return;
    const until = Date.now() + Number(info.TTL ?? 0) * 1000;
    const f = () => setLeft(Math.max(0, Math.round((until - Date.now()) / 1000)));
    f();
    const t = setInterval(f, 1000);
    return () => clearInterval(t);
  }, [info]);
  if (error) return <ErrorLine error={error} />;
  if (!info) return null;
  const expired = Number(info.TTL ?? -1) < 0;
  return (
    <div class="lease" aria-live="polite">
      Lease <code>{BigInt(props.id).toString(16)}</code>:{' '}
      {expired ? 'expired' : `${left} s left of ${info.grantedTTL} s`}
      {info.keys && info.keys.length > 0 && <> · keys: {info.keys.map(unb64).join(', ')}</>}
    </div>
  );
}

/** A key's earlier versions: read at mod_revision − 1 until its first version or compaction. */
async function revisions(key: string, kv: KeyValue): Promise<KeyValue[]> {
  const out: KeyValue[] = [kv];
  let cur = kv;
  for (let i = 0; i < 20 && Number(cur.version ?? 1) > 1; i++) {
    try {
      const r = await gw<{ kvs?: KeyValue[] }>('/v3/kv/range', { key: b64(key), revision: String(Number(cur.mod_revision) - 1) });
      const prev = r.kvs?.[0];
      if (!prev) break;
      out.push(prev);
      cur = prev;
    } catch {
      break; // compacted
    }
  }
  return out;
}

function KeyView(props: { session: Session; k: string; onChanged: () => void }) {
  const { session, k } = props;
  const [kv, error, reload] = useLoad(async () => (await gw<{ kvs?: KeyValue[] }>('/v3/kv/range', { key: b64(k) })).kvs?.[0], [k]);
  const [history, setHistory] = useState<KeyValue[] | null>(null);
  const [cmp, setCmp] = useState<KeyValue | null>(null);
  const [editing, setEditing] = useState(false);
  const [draft, setDraft] = useState('');
  const [err, setErr] = useState<unknown>();
  const writable = may(session, 'write', k);
  useEffect(() => {
    setHistory(null);
    setCmp(null);
    setEditing(false);
  }, [k]);
  if (error) return <ErrorLine error={error} />;
  if (kv === undefined) return <p>Key {k} does not exist (or is being read).</p>;
  const value = unb64(kv.value);
  const format = guessFormat(value);
  async function save() {
    try {
      await gw('/v3/kv/put', { key: b64(k), value: b64(draft), ignore_lease: true });
      setEditing(false);
      reload();
      props.onChanged();
    } catch (e) {
      setErr(e);
    }
  }
  async function remove() {
    if (!confirm(`Delete ${k}?`)) return;
    try {
      await gw('/v3/kv/deleterange', { key: b64(k) });
      props.onChanged();
      go(k.slice(0, k.lastIndexOf('/') + 1));
    } catch (e) {
      setErr(e);
    }
  }
  return (
    <article aria-labelledby="key-title" class="key-view">
      <h2 id="key-title">
        <code>{k}</code>
      </h2>
      <p class="meta">
        version {kv.version} · created at revision {kv.create_revision} · modified at revision {kv.mod_revision}
      </p>
      {kv.lease && kv.lease !== '0' && <Lease id={kv.lease} />}
      <ErrorLine error={err} />
      {editing ? (
        <>
          <Code text={value} format={format} label={`New value of ${k}`} onChange={setDraft} />
          <div class="actions">
            <button type="button" onClick={save}>
              Save
            </button>
            <button type="button" class="ghost" onClick={() => setEditing(false)}>
              Cancel
            </button>
          </div>
        </>
      ) : (
        <>
          <Code text={value} format={format} label={`Value of ${k}`} readOnly />
          <div class="actions">
            {writable && (
              <button
                type="button"
                onClick={() => {
                  setDraft(value);
                  setEditing(true);
                }}
              >
                Edit
              </button>
            )}
            {writable && (
              <button type="button" class="danger" onClick={remove}>
                Delete
              </button>
            )}
            <button type="button" class="ghost" onClick={() => revisions(k, kv).then(setHistory, setErr)}>
              History
            </button>
          </div>
        </>
      )}
      {history && (
        <section aria-label="Revisions">
          <h3>Revisions</h3>
          <ul class="revisions">
            {history.map((h) => (
              <li key={h.mod_revision}>
                <button type="button" class="link" onClick={() => setCmp(h)} aria-pressed={cmp === h}>
                  version {h.version} at revision {h.mod_revision}
                </button>
              </li>
            ))}
          </ul>
          {cmp && (
            <Diff
              a={unb64(cmp.value)}
              b={value}
              format={format}
              labels={[`revision ${cmp.mod_revision}`, `current (revision ${kv.mod_revision})`]}
            />
          )}
        </section>
      )}
    </article>
  );
}

function Tail(props: { prefix: string }) {
  const [events, setEvents] = useState<{ type: string; key: string; rev: string }[]>([]);
  const [error, setError] = useState<unknown>();
  useEffect(() => {
    const ac = new AbortController();
    setEvents([]);
    const req = { create_request: { key: b64(props.prefix || '\0'), range_end: props.prefix ? prefixEnd(props.prefix) : b64('\0') } };
    gwStream(
      '/v3/watch',
      req,
      (m) => {
        const evs = m.result?.events ?? [];
        if (!evs.length) return;
        setEvents((old) =>
          [
            ...evs.map((e: any) => ({ type: e.type ?? 'PUT', key: unb64(e.kv?.key), rev: e.kv?.mod_revision ?? m.result?.header?.revision })),
            ...old,
          ].slice(0, 100),
        );
      },
      ac.signal,
    ).catch((e) => !ac.signal.aborted && setError(e));
    return () => ac.abort();
  }, [props.prefix]);
  return (
    <section aria-labelledby="tail-title" class="tail">
      <h3 id="tail-title">Live changes under {props.prefix || '(all keys)'}</h3>
      <ErrorLine error={error} />
      <ol aria-live="polite" data-testid="tail">
        {events.map((e, i) => (
          <li key={i}>
            <span class={`tag ${e.type.toLowerCase()}`}>{e.type}</span> <code>{e.key}</code> <span class="rev">@{e.rev}</span>
          </li>
        ))}
      </ol>
    </section>
  );
}

export function Keys(props: { session: Session; query: URLSearchParams }) {
  const roots = readablePrefixes(props.session);
  const prefix = props.query.get('prefix') ?? (roots.length === 1 ? roots[0] : '');
  const key = props.query.get('key');
  const [n, setN] = useState(0);
  const [keys, error] = useLoad(async () => {
    const r = await gw<{ kvs?: KeyValue[]; more?: boolean; count?: string }>('/v3/kv/range', {
      key: b64(prefix || '\0'),
      range_end: prefix ? prefixEnd(prefix) : b64('\0'),
      keys_only: true,
      limit: String(PAGE),
    });
    return { keys: (r.kvs ?? []).map((kv) => unb64(kv.key)), more: !!r.more, count: Number(r.count ?? 0) };
  }, [prefix, n]);
  const newKey = useRef<HTMLInputElement>(null);
  const [err, setErr] = useState<unknown>();
  const lvl = keys ? level(prefix, keys.keys) : { dirs: [], leaves: [] };
  const parts = prefix.split('/').filter(Boolean);
  async function create(e: Event) {
    e.preventDefault();
    const f = new FormData(e.target as HTMLFormElement);
    const k = String(f.get('key'));
    try {
      await gw('/v3/kv/put', { key: b64(k), value: b64(String(f.get('value'))) });
      (e.target as HTMLFormElement).reset();
      setN((x) => x + 1);
      go(prefix, k);
    } catch (er) {
      setErr(er);
    }
  }
  return (
    <section aria-labelledby="keys-title">
      <h1 id="keys-title">Keys</h1>
      <nav aria-label="Prefix" class="crumbs">
        <button type="button" class="link" onClick={() => go('')}>
          (root)
        </button>
        {parts.map((p, i) => (
          <>
            {' / '}
            <button type="button" class="link" onClick={() => go('/' + parts.slice(0, i + 1).join('/') + '/')}>
              {p}
            </button>
          </>
        ))}
      </nav>
      <form class="inline" key={prefix} onSubmit={(e) => {
        e.preventDefault();
        go(String(new FormData(e.target as HTMLFormElement).get('prefix')));
      }}>
        <label>
          Prefix <input name="prefix" defaultValue={prefix} />
        </label>
        <button type="submit">Go</button>
      </form>
      <ErrorLine error={error} />
      <div class="split">
        <div class="tree" role="list" aria-label="Keys under the prefix">
          {lvl.dirs.map((d) => (
            <div role="listitem" key={d}>
              <button type="button" class="link dir" onClick={() => go(d)}>
                📁 {d.slice(prefix.length)}
              </button>
            </div>
          ))}
          {lvl.leaves.map((k) => (
            <div role="listitem" key={k}>
              <button type="button" class="link" aria-current={k === key ? 'true' : undefined} onClick={() => go(prefix, k)}>
                {k.slice(prefix.length) || k}
              </button>
            </div>
          ))}
          {keys?.more && <p class="hint">Showing the first {PAGE} of {keys.count} keys: narrow the prefix.</p>}
          {keys && keys.keys.length === 0 && <p class="hint">No keys under this prefix.</p>}
        </div>
        <div class="detail">
          {key ? <KeyView session={props.session} k={key} onChanged={() => setN((x) => x + 1)} /> : <p class="hint">Choose a key.</p>}
        </div>
      </div>
      {props.session.root || props.session.perms.some((p) => p.write) ? (
        <details>
          <summary>Put a key</summary>
          <form onSubmit={create} class="stack" key={prefix}>
            <label>
              Key <input name="key" ref={newKey} defaultValue={prefix} required />
            </label>
            <label>
              Value <textarea name="value" rows={3} />
            </label>
            <ErrorLine error={err} />
            <button type="submit">Put</button>
          </form>
        </details>
      ) : null}
      <Tail prefix={prefix} />
    </section>
  );
}
