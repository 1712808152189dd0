// Configs: search by namespace, group and data id; an editor whose content is checked by the
// server (format and JSON Schema, `?dryRun=true`) with errors shown inline before anything is
// stored; a diff of the change in the publish confirmation; history with a diff of any two
// versions; rollback as a new version.
import { useRef, useState } from 'preact/hooks';
import type { EditorView } from 'codemirror';
import { ApiError, download, mast, mastRaw, seg } from '../api';
import { may, mayUnder, type Session } from '../session';
import { Code, Diff, Dialog, ErrorLine, useLoad, when } from '../components';
import { clearErrors, showError } from '../editor';
import { GrayPanel, RolloutPanel } from './gray';

interface Summary {
  namespace: string;
  group: string;
  dataId: string;
  format: string;
  version: number;
  md5: string;
  description?: string;
  author?: string;
  updatedAt?: number;
  hasSchema?: boolean;
}
interface Config extends Summary {
  content: string;
}
interface HistoryItem {
  version: number;
  op: string;
  format: string;
  author?: string;
  time: number;
  rolledBackFrom?: number;
  size?: number;
}

const FORMATS = ['text', 'json', 'yaml', 'toml', 'properties', 'xml', 'html'];
const PAGE_SIZE = 50;

const path = (ns: string, g: string, id: string) => `/configs/${seg(ns)}/${seg(g)}/${seg(id)}`;
const href = (ns: string, g: string, id: string) => `#/configs/${seg(ns)}/${seg(g)}/${seg(id)}`;
/** The etcd key a config's content lives at (what permissions name). */
const contentKey = (ns: string, g: string, id: string) => `/configs/${ns}/${g}/${id}`;

const MODES: [string, string][] = [
  ['search', 'Data id contains'],
  ['dataIdPrefix', 'Data id starts with'],
  ['dataId', 'Data id is'],
  ['content', 'Content contains'],
];

interface ImportResult {
  succeeded: number;
  skipped: string[];
  failed: { group: string; dataId: string; error: string }[];
}

/** Export (Nacos's zip layout), import of such a zip, clone to another namespace. */
function Transfer(props: { session: Session; ns: string; group: string }) {
  const ns = props.ns || 'public';
  const [result, setResult] = useState<ImportResult | null>(null);
  const [error, setError] = useState<unknown>();
  const writable = mayUnder(props.session, 'write', '/configs/');
  const sel = new URLSearchParams({ namespace: ns });
  if (props.group) sel.set('group', props.group);
  async function run(f: () => Promise<ImportResult>) {
    setError(undefined);
    setResult(null);
    try {
      setResult(await f());
    } catch (e) {
      setError(e);
    }
  }
  return (
    <details>
      <summary>Export, import, clone</summary>
      <div class="stack wide">
        <p>
          <button type="button" onClick={() => download(`/configs/export?${sel}`, `nacos_config_export_${ns}.zip`).catch(setError)}>
            Export {ns}
            {props.group ? ` / ${props.group}` : ''} as a Nacos zip
          </button>
        </p>
        {writable && (
          <form
            class="inline"
            onSubmit={(e) => {
              e.preventDefault();
              const f = new FormData(e.target as HTMLFormElement);
              const file = f.get('file') as File;
              const q = new URLSearchParams({ namespace: String(f.get('namespace') || ns), policy: String(f.get('policy')) });
              run(() => mastRaw<ImportResult>('POST', `/configs/import?${q}`, file, 'application/zip'));
            }}
          >
            <label>
              Zip to import <input type="file" name="file" accept=".zip,application/zip" required />
            </label>
            <label>
              into namespace <input name="namespace" defaultValue={ns} class="narrow" aria-label="Import into namespace" />
            </label>
            <select name="policy" aria-label="When a config exists">
              <option value="abort">when one exists: import nothing</option>
              <option value="skip">when one exists: skip it</option>
              <option value="overwrite">when one exists: new version</option>
            </select>
            <button type="submit">Import</button>
          </form>
        )}
        {writable && (
          <form
            class="inline"
            onSubmit={(e) => {
              e.preventDefault();
              const f = new FormData(e.target as HTMLFormElement);
              const from: Record<string, string> = { namespace: ns };
              if (props.group) from.group = props.group;
              run(() => mast<ImportResult>('POST', '/configs/clone', { from, toNamespace: String(f.get('to')), policy: String(f.get('policy')) }));
            }}
          >
            <label>
              Clone {ns}
              {props.group ? ` / ${props.group}` : ''} to namespace <input name="to" required class="narrow" aria-label="Clone to namespace" />
            </label>
            <select name="policy" aria-label="When a cloned config exists">
              <option value="abort">when one exists: clone nothing</option>
              <option value="skip">when one exists: skip it</option>
              <option value="overwrite">when one exists: new version</option>
            </select>
            <button type="submit">Clone</button>
          </form>
        )}
        <ErrorLine error={error} />
        {result && (
          <p role="status" data-testid="transfer-result">
            {result.succeeded} written, {result.skipped.length} skipped, {result.failed.length} refused
            {result.failed.length > 0 && `: ${result.failed.map((f) => `${f.group}/${f.dataId} (${f.error})`).join('; ')}`}
          </p>
        )}
      </div>
    </details>
  );
}

function List(props: { session: Session; query: URLSearchParams }) {
  const q = props.query;
  const ns = q.get('namespace') ?? '';
  const group = q.get('group') ?? '';
  const mode = MODES.some(([m]) => m === q.get('mode')) ? q.get('mode')! : 'search';
  const text = q.get('q') ?? '';
  const page = Math.max(0, Number(q.get('page') ?? 0) || 0);
  const [list, error] = useLoad(() => {
    const p = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(page * PAGE_SIZE) });
    if (ns) p.set('namespace', ns);
    if (group) p.set('group', group);
    if (text) p.set(mode, text);
    return mast<{ configs: Summary[]; total: number }>('GET', `/configs?${p}`);
  }, [ns, group, mode, text, page]);
  function go(next: Record<string, string>) {
    const p = new URLSearchParams();
    const all = { namespace: ns, group, mode, q: text, page: '0', ...next };
    for (const [k, v] of Object.entries(all)) if (v && !(k === 'page' && v === '0') && !(k === 'mode' && v === 'search')) p.set(k, v);
    location.hash = `#/configs?${p}`;
  }
  function filter(e: Event) {
    e.preventDefault();
    const f = new FormData(e.target as HTMLFormElement);
    go({
      namespace: String(f.get('namespace') ?? '').trim(),
      group: String(f.get('group') ?? '').trim(),
      mode: String(f.get('mode') ?? 'search'),
      q: String(f.get('q') ?? ''),
    });
  }
  const configs = list?.configs ?? [];
  const total = list?.total ?? 0;
  const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
  return (
    <section aria-labelledby="configs-title">
      <h1 id="configs-title">Configs</h1>
      <form class="inline" role="search" onSubmit={filter} key={`${ns}|${group}|${mode}|${text}`}>
        <label>
          Namespace <input name="namespace" defaultValue={ns} />
        </label>
        <label>
          Group <input name="group" defaultValue={group} />
        </label>
        <select name="mode" aria-label="Search by" defaultValue={mode}>
          {MODES.map(([m, label]) => (
            <option value={m}>{label}</option>
          ))}
        </select>
        <input name="q" defaultValue={text} aria-label="Search text" />
        <button type="submit">Search</button>
        {mayUnder(props.session, 'write', '/configs/') && (
          <a class="button" href="#/configs/new">
            New config
          </a>
        )}
      </form>
      <Transfer session={props.session} ns={ns} group={group} />
      <ErrorLine error={error} />
      <div class="table-wrap" tabIndex={0} role="region" aria-label="Scrollable table">
        <table>
          <thead>
            <tr>
              <th scope="col">Data id</th>
              <th scope="col">Group</th>
              <th scope="col">Namespace</th>
              <th scope="col">Format</th>
              <th scope="col">Version</th>
              <th scope="col">Updated</th>
              <th scope="col">By</th>
            </tr>
          </thead>
          <tbody data-testid="config-rows">
            {configs.map((c) => (
              <tr key={`${c.namespace}/${c.group}/${c.dataId}`}>
                <td>
                  <a href={href(c.namespace, c.group, c.dataId)}>{c.dataId}</a>
                </td>
                <td>{c.group}</td>
                <td>{c.namespace}</td>
                <td>{c.format}</td>
                <td>{c.version}</td>
                <td>{when(c.updatedAt)}</td>
                <td>{c.author}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {list && (
        <nav class="inline" aria-label="Pages">
          <button type="button" class="ghost" disabled={page === 0} onClick={() => go({ page: String(page - 1) })}>
            Previous
          </button>
          <span data-testid="config-total">
            {total} configs · page {Math.min(page + 1, pages)} of {pages}
          </span>
          <button type="button" class="ghost" disabled={page + 1 >= pages} onClick={() => go({ page: String(page + 1) })}>
            Next
          </button>
        </nav>
      )}
    </section>
  );
}

/** The editor with dry-run validation and a diff before the publish. */
function Editor(props: {
  session: Session;
  id: { ns: string; group: string; dataId: string };
  current: Config | null;
  onPublished: (c: Summary) => void;
}) {
  const { ns, group, dataId } = props.id;
  const cur = props.current;
  const [format, setFormat] = useState(cur?.format ?? 'json');
  const draft = useRef(cur?.content ?? '');
  const view = useRef<EditorView | null>(null);
  const [error, setError] = useState<unknown>();
  const [confirming, setConfirming] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const writable = may(props.session, 'write', contentKey(ns, group, dataId));

  function body() {
    return { content: draft.current, format, expectedVersion: cur?.version ?? 0 };
  }
  async function check() {
    setError(undefined);
    if (view.current) clearErrors(view.current);
    setBusy(true);
    try {
      await mast('PUT', `${path(ns, group, dataId)}?dryRun=true`, body());
      setConfirming(draft.current);
    } catch (e) {
      setError(e);
      if (e instanceof ApiError && view.current && e.status === 400) showError(view.current, e.message);
    } finally {
      setBusy(false);
    }
  }
  async function publish() {
    setBusy(true);
    try {
      const r = await mast<Summary>('PUT', path(ns, group, dataId), body());
      setConfirming(null);
      props.onPublished(r);
    } catch (e) {
      setConfirming(null);
      setError(e);
    } finally {
      setBusy(false);
    }
  }
  return (
    <div class="editor">
      <div class="inline">
        <label>
          Format{' '}
          <select aria-label="Format" value={format} onChange={(e) => setFormat((e.target as HTMLSelectElement).value)} disabled={!writable}>
            {FORMATS.map((f) => (
              <option value={f}>{f}</option>
            ))}
          </select>
        </label>
        {cur?.hasSchema && <span class="tag">JSON Schema attached</span>}
      </div>
      <Code
        text={cur?.content ?? ''}
        format={format}
        label={`Content of ${dataId}`}
        readOnly={!writable}
        onChange={(t) => (draft.current = t)}
        viewRef={view}
      />
      <ErrorLine error={error} />
      {writable && (
        <div class="actions">
          <button type="button" onClick={check} disabled={busy}>
            Publish…
          </button>
        </div>
      )}
      <Dialog title={`Publish ${dataId}`} open={confirming !== null} onClose={() => setConfirming(null)}>
        <p>
          {cur ? `Version ${cur.version} → ${cur.version + 1}` : 'A new config, version 1'} in {ns} / {group}.
        </p>
        <Diff a={cur?.content ?? ''} b={confirming ?? ''} format={format} labels={[cur ? `version ${cur.version}` : 'nothing', 'to publish']} />
        <div class="actions">
          <button type="button" onClick={publish} disabled={busy}>
            Publish
          </button>
          <button type="button" class="ghost" onClick={() => setConfirming(null)}>
            Cancel
          </button>
        </div>
      </Dialog>
    </div>
  );
}

function History(props: { session: Session; ns: string; group: string; dataId: string; current: Config; onChanged: () => void }) {
  const { ns, group, dataId, current } = props;
  const [list, error, reload] = useLoad(
    () => mast<{ versions: HistoryItem[]; retention: number }>('GET', `${path(ns, group, dataId)}/history?limit=100`),
    [ns, group, dataId, current.version],
  );
  const [pick, setPick] = useState<[number | null, number | null]>([null, null]);
  const [texts, setTexts] = useState<[string, string] | null>(null);
  const [err, setErr] = useState<unknown>();
  const writable = may(props.session, 'write', contentKey(ns, group, dataId));
  async function compare() {
    const [a, b] = pick;
    if (a === null || b === null) return;
    try {
      const [x, y] = await Promise.all(
        [a, b].map((v) => mast<{ content: string }>('GET', `${path(ns, group, dataId)}/history/${v}`)),
      );
      setTexts([x.content, y.content]);
    } catch (e) {
      setErr(e);
    }
  }
  async function rollback(version: number) {
    if (!confirm(`Publish version ${version}'s content again as version ${current.version + 1}?`)) return;
    try {
      await mast('POST', `${path(ns, group, dataId)}/rollback`, { version, expectedVersion: current.version });
      reload();
      props.onChanged();
    } catch (e) {
      setErr(e);
    }
  }
  const versions = list?.versions ?? [];
  return (
    <section aria-labelledby="history-title">
      <h2 id="history-title">History</h2>
      <ErrorLine error={error || err} />
      <div class="table-wrap" tabIndex={0} role="region" aria-label="Scrollable table">
        <table>
          <caption class="hint">Choose two versions to compare (kept: the last {list?.retention ?? '…'}).</caption>
          <thead>
            <tr>
              <th scope="col">From</th>
              <th scope="col">To</th>
              <th scope="col">Version</th>
              <th scope="col">Change</th>
              <th scope="col">By</th>
              <th scope="col">When</th>
              <th scope="col">
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {versions.map((v) => (
              <tr key={v.version}>
                <td>
                  <input type="radio" name="from" aria-label={`Compare from version ${v.version}`} checked={pick[0] === v.version} onChange={() => setPick([v.version, pick[1]])} />
                </td>
                <td>
                  <input type="radio" name="to" aria-label={`Compare to version ${v.version}`} checked={pick[1] === v.version} onChange={() => setPick([pick[0], v.version])} />
                </td>
                <td>{v.version}</td>
                <td>
                  {v.op}
                  {v.rolledBackFrom ? ` (from ${v.rolledBackFrom})` : ''}
                </td>
                <td>{v.author}</td>
                <td>{when(v.time)}</td>
                <td>
                  {writable && v.version !== current.version && (
                    <button type="button" class="ghost" onClick={() => rollback(v.version)}>
                      Roll back to {v.version}
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <button type="button" onClick={compare} disabled={pick[0] === null || pick[1] === null}>
        Compare
      </button>
      {texts && pick[0] !== null && pick[1] !== null && (
        <Diff a={texts[0]} b={texts[1]} format={current.format} labels={[`version ${pick[0]}`, `version ${pick[1]}`]} />
      )}
    </section>
  );
}

function Detail(props: { session: Session; ns: string; group: string; dataId: string }) {
  const { ns, group, dataId } = props;
  const [n, setN] = useState(0);
  const [cfg, error] = useLoad(
    () =>
      mast<Config>('GET', path(ns, group, dataId)).catch((e) => {
        if (e instanceof ApiError && e.status === 404) return null;
        throw e;
      }),
    [ns, group, dataId, n],
  );
  return (
    <section aria-labelledby="config-title">
      <p>
        <a href="#/configs">← Configs</a>
      </p>
      <h1 id="config-title">
        {dataId} <span class="sub">{ns} / {group}</span>
      </h1>
      <ErrorLine error={error} />
      {cfg !== undefined && (
        <>
          {cfg && (
            <p class="meta" data-testid="config-meta">
              version {cfg.version} · {cfg.format} · md5 {cfg.md5} · {when(cfg.updatedAt)} {cfg.author ? `by ${cfg.author}` : ''}
            </p>
          )}
          <Editor key={`${cfg?.version}`} session={props.session} id={{ ns, group, dataId }} current={cfg} onPublished={() => setN((x) => x + 1)} />
          {cfg && <RolloutPanel base={path(ns, group, dataId)} version={cfg.version} />}
          {cfg && (
            <GrayPanel
              base={path(ns, group, dataId)}
              format={cfg.format}
              content={cfg.content}
              writable={may(props.session, 'write', contentKey(ns, group, dataId))}
              onChanged={() => setN((x) => x + 1)}
            />
          )}
          {cfg && <History session={props.session} ns={ns} group={group} dataId={dataId} current={cfg} onChanged={() => setN((x) => x + 1)} />}
        </>
      )}
    </section>
  );
}

function New(props: { session: Session }) {
  function open(e: Event) {
    e.preventDefault();
    const f = new FormData(e.target as HTMLFormElement);
    location.hash = href(String(f.get('namespace')), String(f.get('group')), String(f.get('dataId')));
  }
  return (
    <section aria-labelledby="new-title">
      <h1 id="new-title">New config</h1>
      <form class="stack" onSubmit={open}>
        <label>
          Namespace <input name="namespace" value="public" required />
        </label>
        <label>
          Group <input name="group" value="DEFAULT_GROUP" required />
        </label>
        <label>
          Data id <input name="dataId" required />
        </label>
        <button type="submit">Open the editor</button>
      </form>
    </section>
  );
}

export function Configs(props: { session: Session; path: string[]; query: URLSearchParams }) {
  const p = props.path;
  if (p[0] === 'new') return <New session={props.session} />;
  if (p.length >= 3) return <Detail session={props.session} ns={p[0]} group={p[1]} dataId={p.slice(2).join('/')} />;
  return <List session={props.session} query={props.query} />;
}
