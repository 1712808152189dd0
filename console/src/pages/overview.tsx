// Overview: the members and their leader, revision, database size, alarms, and charts of the
// request rate, unary latency (p50 / p99), watchers and leases, from Mast's own /metrics and the
// etcd Maintenance and Cluster APIs.
import { useEffect, useRef, useState } from 'preact/hooks';
import uPlot from 'uplot';
import parsePrometheus, { type Family } from 'parse-prometheus-text-format';
import { gw } from '../api';
import type { Session } from '../session';
import { ErrorLine, bytes } from '../components';

const POLL_MS = 2000;
const POINTS = 90;

interface Status {
  header?: { member_id?: string; revision?: string; raft_term?: string };
  version?: string;
  dbSize?: string;
  dbSizeInUse?: string;
  leader?: string;
  raftIndex?: string;
  raftTerm?: string;
  errors?: string[];
  isLearner?: boolean;
}
interface Member {
  ID?: string;
  name?: string;
  peerURLs?: string[];
  clientURLs?: string[];
  isLearner?: boolean;
}

/** The sum of every series of `name` (counters and gauges). */
function total(fams: Family[], name: string): number {
  const f = fams.find((x) => x.name === name);
  return (f?.metrics ?? []).reduce((s, m) => s + Number(m.value ?? 0), 0);
}

/** Bucket counts of histogram `name`, summed over its series: [upper bound, count] sorted. */
function buckets(fams: Family[], name: string): [number, number][] {
  const f = fams.find((x) => x.name === name);
  const acc = new Map<number, number>();
  for (const m of f?.metrics ?? []) {
    for (const [le, c] of Object.entries(m.buckets ?? {})) {
      const b = le === '+Inf' ? Infinity : Number(le);
      acc.set(b, (acc.get(b) ?? 0) + Number(c));
    }
  }
  return [...acc.entries()].sort((a, b) => a[0] - b[0]);
}

/** The `q` quantile (0–1) of the observations between two cumulative bucket snapshots, ms. */
function quantile(prev: [number, number][], cur: [number, number][], q: number): number | null {
  const d = cur.map(([le, c], i) => [le, c - (prev[i]?.[1] ?? 0)] as [number, number]);
  const n = d.length ? d[d.length - 1][1] : 0;
  if (n <= 0) return null;
  const want = q * n;
  for (const [le, c] of d) if (c >= want) return Number.isFinite(le) ? le * 1000 : null;
  return null;
}

function Chart(props: { title: string; series: string[]; data: number[][]; unit: string }) {
  const host = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  useEffect(() => {
    const el = host.current!;
    const opts: uPlot.Options = {
      width: Math.max(260, el.clientWidth || 320),
      height: 160,
      legend: { show: true },
      axes: [{ stroke: 'currentColor' }, { stroke: 'currentColor', label: props.unit }],
      series: [
        {},
        ...props.series.map((s, i) => ({ label: s, stroke: ['#2f7de1', '#e8772e', '#3aa655'][i % 3], width: 2 })),
      ],
    };
    plot.current = new uPlot(opts, props.data as uPlot.AlignedData, el);
    const ro = new ResizeObserver(() => plot.current?.setSize({ width: Math.max(260, el.clientWidth), height: 160 }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      plot.current?.destroy();
    };
  }, []);
  useEffect(() => {
    plot.current?.setData(props.data as uPlot.AlignedData);
  }, [props.data]);
  return (
    <figure class="chart">
      <figcaption>{props.title}</figcaption>
      <div ref={host} role="img" aria-label={`${props.title} chart`} />
    </figure>
  );
}

export function Overview(_: { session: Session }) {
  const [status, setStatus] = useState<Status>();
  const [members, setMembers] = useState<Member[]>([]);
  const [alarms, setAlarms] = useState<{ memberID?: string; alarm?: string }[]>([]);
  const [leases, setLeases] = useState<number | null>(null);
  const [now, setNow] = useState({ watchers: 0, keys: 0 });
  const [error, setError] = useState<unknown>();
  const hist = useRef({ t: [] as number[], rate: [] as number[], p50: [] as (number | null)[], p99: [] as (number | null)[], watchers: [] as number[], leases: [] as number[] });
  const last = useRef<{ t: number; handled: number; b: [number, number][] } | null>(null);
  const [tick, setTick] = useState(0);

  useEffect(() => {
    let live = true;
    async function poll() {
      try {
        const [s, m, a, l, text] = await Promise.all([
          gw<Status>('/v3/maintenance/status'),
          gw<{ members?: Member[] }>('/v3/cluster/member/list'),
          gw<{ alarms?: { memberID?: string; alarm?: string }[] }>('/v3/maintenance/alarm', { action: 'GET' }).catch(() => ({ alarms: [] })),
          gw<{ leases?: unknown[] }>('/v3/lease/leases').catch(() => null),
          fetch('/metrics').then((r) => r.text()),
        ]);
        if (!live) return;
        setStatus(s);
        setMembers(m.members ?? []);
        setAlarms(a.alarms ?? []);
        const leaseCount = l ? (l.leases ?? []).length : null;
        setLeases(leaseCount);
        const fams = parsePrometheus(text);
        const t = Date.now() / 1000;
        const handled = total(fams, 'grpc_server_handled_total');
        const b = buckets(fams, 'grpc_server_handling_seconds');
        const watchers = total(fams, 'etcd_debugging_mvcc_watcher_total');
        setNow({ watchers, keys: total(fams, 'etcd_debugging_mvcc_keys_total') });
        const h = hist.current;
        const p = last.current;
        if (p) {
          h.t.push(t);
          h.rate.push(Math.max(0, (handled - p.handled) / (t - p.t)));
          h.p50.push(quantile(p.b, b, 0.5));
          h.p99.push(quantile(p.b, b, 0.99));
          h.watchers.push(watchers);
          h.leases.push(leaseCount ?? 0);
          for (const k of Object.keys(h) as (keyof typeof h)[]) if (h[k].length > POINTS) h[k].shift();
          setTick((x) => x + 1);
        }
        last.current = { t, handled, b };
        setError(undefined);
      } catch (e) {
        if (live) setError(e);
      }
    }
    poll();
    const id = setInterval(poll, POLL_MS);
    return () => {
      live = false;
      clearInterval(id);
    };
  }, []);

  const h = hist.current;
  const leaderId = status?.leader;
  return (
    <section aria-labelledby="overview-title">
      <h1 id="overview-title">Overview</h1>
      <ErrorLine error={error} />
      <dl class="stats">
        <div>
          <dt>Revision</dt>
          <dd data-testid="revision">{status?.header?.revision ?? '…'}</dd>
        </div>
        <div>
          <dt>Database size</dt>
          <dd>{status?.dbSize ? bytes(Number(status.dbSize)) : '…'}</dd>
        </div>
        <div>
          <dt>Raft term / index</dt>
          <dd>
            {status?.raftTerm ?? '…'} / {status?.raftIndex ?? '…'}
          </dd>
        </div>
        <div>
          <dt>Keys</dt>
          <dd>{now.keys}</dd>
        </div>
        <div>
          <dt>Watchers</dt>
          <dd>{now.watchers}</dd>
        </div>
        <div>
          <dt>Leases</dt>
          <dd>{leases ?? 'not permitted'}</dd>
        </div>
        <div>
          <dt>Version</dt>
          <dd>{status?.version ?? '…'}</dd>
        </div>
        <div>
          <dt>Alarms</dt>
          <dd class={alarms.length ? 'bad' : ''}>{alarms.length ? alarms.map((a) => a.alarm).join(', ') : 'none'}</dd>
        </div>
      </dl>
      <h2>Members</h2>
      <div class="table-wrap" tabIndex={0} role="region" aria-label="Scrollable table">
        <table>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">ID</th>
              <th scope="col">Role</th>
              <th scope="col">Client URLs</th>
              <th scope="col">Peer URLs</th>
            </tr>
          </thead>
          <tbody>
            {members.map((m) => (
              <tr key={m.ID}>
                <td>{m.name || '(unstarted)'}</td>
                <td>
                  <code>{BigInt(m.ID ?? '0').toString(16)}</code>
                </td>
                <td>{m.ID === leaderId ? 'leader' : m.isLearner ? 'learner' : 'follower'}</td>
                <td>{(m.clientURLs ?? []).join(', ')}</td>
                <td>{(m.peerURLs ?? []).join(', ')}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <div class="charts" data-tick={tick}>
        <Chart title="Requests per second (etcd gRPC)" series={['req/s']} unit="req/s" data={[h.t, h.rate]} />
        <Chart title="Unary latency" series={['p50', 'p99']} unit="ms" data={[h.t, h.p50 as number[], h.p99 as number[]]} />
        <Chart title="Watchers and leases" series={['watchers', 'leases']} unit="count" data={[h.t, h.watchers, h.leases]} />
      </div>
      <p class="hint">Charts sample this member every {POLL_MS / 1000} s while the page is open.</p>
    </section>
  );
}
