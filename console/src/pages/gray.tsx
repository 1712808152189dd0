// A config's gray releases (rule by labels, addresses or a stable percentage of client ids;
// widened, promoted or stopped) and its rollout progress (clients per version, who lags, how
// long the last change took to reach everyone): `/mast/v1/configs/…/gray` and `…/rollout`.
import { useState } from 'preact/hooks';
import { mast } from '../api';
import { Code, ErrorLine, useLoad, when } from '../components';

type Rule = { type: 'labels'; labels: Record<string, string> } | { type: 'ip'; ips: string[] } | { type: 'percentage'; percentage: number };
interface Gray {
  name: string;
  content: string;
  md5: string;
  rule: Rule;
  priority?: number;
  author?: string;
  updatedAt?: number;
}
interface Rollout {
  version?: number;
  md5: string;
  publishedAt: number;
  clients: number;
  onCurrent: number;
  versions: { md5: string; version?: number; current?: boolean; clients: string[] }[];
  lagging: { clientId: string; md5: string; version?: number; address?: string; via?: string }[];
  complete: boolean;
  tookMs?: number;
}

function ruleText(r: Rule): string {
  switch (r.type) {
    case 'labels':
      return `labels ${Object.entries(r.labels).map(([k, v]) => `${k}=${v}`).join(', ')}`;
    case 'ip':
      return `addresses ${r.ips.join(', ')}`;
    case 'percentage':
      return `${r.percentage} % of client ids`;
  }
}

/** Reads the rule form: `zone=eu, canary=true` / `10.0.0.1, 10.0.0.2` / `25`. */
function parseRule(type: string, text: string): Rule {
  const parts = text.split(',').map((s) => s.trim()).filter(Boolean);
  if (type === 'labels') return { type, labels: Object.fromEntries(parts.map((p) => p.split('=', 2).map((s) => s.trim()))) };
  if (type === 'ip') return { type, ips: parts };
  return { type: 'percentage', percentage: Number(text) };
}

export function GrayPanel(props: { base: string; format: string; content: string; writable: boolean; onChanged: () => void }) {
  const [list, error, reload] = useLoad(() => mast<{ grays: Gray[] }>('GET', `${props.base}/gray`), [props.base]);
  const [err, setErr] = useState<unknown>();
  const [draft, setDraft] = useState(props.content);
  async function run(f: () => Promise<unknown>) {
    setErr(undefined);
    try {
      await f();
      reload();
      props.onChanged();
    } catch (e) {
      setErr(e);
    }
  }
  const grays = list?.grays ?? [];
  return (
    <section aria-labelledby="gray-title">
      <h2 id="gray-title">Gray releases</h2>
      <ErrorLine error={error || err} />
      {grays.length === 0 && <p class="hint">No gray release: every client gets the version above.</p>}
      <ul class="plain">
        {grays.map((g) => (
          <li key={g.name} class="panel">
            <strong>{g.name}</strong> · {ruleText(g.rule)} · priority {g.priority ?? 0} · {when(g.updatedAt)} {g.author ? `by ${g.author}` : ''}
            <Code text={g.content} format={props.format} label={`Content of gray ${g.name}`} readOnly />
            {props.writable && (
              <div class="actions">
                {g.rule.type === 'percentage' && (
                  <button
                    type="button"
                    class="ghost"
                    onClick={() => {
                      const r = g.rule as { percentage: number };
                      run(() => mast('PUT', `${props.base}/gray/${encodeURIComponent(g.name)}`, { content: g.content, rule: { type: 'percentage', percentage: Math.min(100, r.percentage * 2 || 10) }, priority: g.priority }));
                    }}
                  >
                    Widen to {Math.min(100, ((g.rule as { percentage: number }).percentage * 2) || 10)} %
                  </button>
                )}
                <button type="button" onClick={() => confirm(`Promote ${g.name}: its content becomes the next version for every client?`) && run(() => mast('POST', `${props.base}/gray/${encodeURIComponent(g.name)}/promote`, {}))}>
                  Promote {g.name}
                </button>
                <button type="button" class="danger" onClick={() => run(() => mast('DELETE', `${props.base}/gray/${encodeURIComponent(g.name)}`))}>
                  Stop {g.name}
                </button>
              </div>
            )}
          </li>
        ))}
      </ul>
      {props.writable && (
        <details>
          <summary>Start a gray release</summary>
          <form
            class="stack wide"
            onSubmit={(e) => {
              e.preventDefault();
              const f = new FormData(e.target as HTMLFormElement);
              const name = String(f.get('name'));
              const rule = parseRule(String(f.get('type')), String(f.get('rule')));
              run(() => mast('PUT', `${props.base}/gray/${encodeURIComponent(name)}`, { content: draft, rule, priority: Number(f.get('priority') || 0) }));
            }}
          >
            <label>
              Name <input name="name" required pattern="[A-Za-z0-9._-]+" />
            </label>
            <label>
              Rule{' '}
              <select name="type" aria-label="Rule type">
                <option value="labels">client labels (zone=eu, canary=true)</option>
                <option value="ip">client addresses (10.0.0.1, 10.0.0.2)</option>
                <option value="percentage">percentage of client ids (25)</option>
              </select>
            </label>
            <label>
              Who <input name="rule" required aria-label="Rule value" />
            </label>
            <label>
              Priority <input name="priority" type="number" value="0" class="narrow" />
            </label>
            <Code text={props.content} format={props.format} label="Content of the gray release" onChange={setDraft} />
            <button type="submit">Start gray release</button>
          </form>
        </details>
      )}
    </section>
  );
}

export function RolloutPanel(props: { base: string; version: number }) {
  const [r, error, reload] = useLoad(() => mast<Rollout>('GET', `${props.base}/rollout`), [props.base, props.version]);
  return (
    <section aria-labelledby="rollout-title">
      <h2 id="rollout-title">Rollout</h2>
      <ErrorLine error={error} />
      {r && (
        <>
          <p data-testid="rollout">
            {r.clients === 0
              ? 'No client has reported this config.'
              : `${r.onCurrent} of ${r.clients} clients on version ${r.version ?? r.md5}${r.complete ? ` — complete${r.tookMs !== undefined ? ` in ${r.tookMs} ms` : ''}` : ''}`}{' '}
            <button type="button" class="ghost" onClick={reload}>
              Refresh
            </button>
          </p>
          {r.versions.length > 0 && (
            <div class="table-wrap" tabIndex={0} role="region" aria-label="Scrollable table">
              <table>
                <thead>
                  <tr>
                    <th scope="col">Version</th>
                    <th scope="col">Clients</th>
                  </tr>
                </thead>
                <tbody>
                  {r.versions.map((v) => (
                    <tr key={v.md5}>
                      <td>
                        {v.version ?? v.md5}
                        {v.current ? ' (current)' : ''}
                      </td>
                      <td>{v.clients.join(', ')}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
          {r.lagging.length > 0 && (
            <p class="bad">
              Lagging: {r.lagging.map((l) => `${l.clientId}${l.address ? ` (${l.address})` : ''} on ${l.version ?? l.md5}`).join(', ')}
            </p>
          )}
        </>
      )}
    </section>
  );
}
