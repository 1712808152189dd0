// Every call the console makes: the etcd JSON gateway (/v3/…) and the registry and config API
// (/mast/v1/…), with the signed-in user's token in `Authorization`, exactly as any other client.

/** An error answered by the server: its HTTP status, message and code (when it gave one). */
export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
    public code?: string | number,
  ) {
    super(message);
  }
}

let token: string | null = sessionStorage.getItem('mast.token');
const listeners = new Set<() => void>();

/** The token of the signed-in user (null with auth off or signed out). */
export function currentToken(): string | null {
  return token;
}

/** Remembers `t` for this tab and for every later call. */
export function setToken(t: string | null): void {
  token = t;
  if (t) sessionStorage.setItem('mast.token', t);
  else sessionStorage.removeItem('mast.token');
}

/** Calls `f` when a call is refused for an invalid or old token (the session ended). */
export function onSessionEnd(f: () => void): () => void {
  listeners.add(f);
  return () => listeners.delete(f);
}

function headers(json: boolean): Record<string, string> {
  const h: Record<string, string> = {};
  if (json) h['Content-Type'] = 'application/json';
  if (token) h['Authorization'] = token;
  return h;
}

async function answer<T>(r: Response): Promise<T> {
  const text = await r.text();
  let body: any = undefined;
  try {
    body = text ? JSON.parse(text) : {};
  } catch {
    body = { error: text };
  }
  if (!r.ok) {
    const message = String(body?.error ?? body?.message ?? r.statusText);
    // etcd's "invalid auth token" / "revision of auth store is old" end the session.
    if (r.status === 401 || /invalid auth token|auth store is old/.test(message)) {
      listeners.forEach((f) => f());
    }
    throw new ApiError(r.status, message, body?.code);
  }
  return body as T;
}

/** POSTs `body` to an etcd gateway path (`/v3/kv/range`, …). */
export async function gw<T = any>(path: string, body: object = {}): Promise<T> {
  const r = await fetch(path, { method: 'POST', headers: headers(true), body: JSON.stringify(body) });
  return answer<T>(r);
}

/** Calls `/mast/v1/…`. */
export async function mast<T = any>(method: string, path: string, body?: object): Promise<T> {
  const r = await fetch(`/mast/v1${path}`, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return answer<T>(r);
}

/** Path segment, escaped. */
export const seg = encodeURIComponent;

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: false });

/** Text → base64 of its UTF-8 bytes (keys and values on the gateway). */
export function b64(s: string): string {
  const bytes = enc.encode(s);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

/** base64 → bytes. */
export function unb64bytes(s: string | undefined): Uint8Array {
  if (!s) return new Uint8Array();
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** base64 → text (UTF-8, invalid bytes replaced). */
export function unb64(s: string | undefined): string {
  return dec.decode(unb64bytes(s));
}

/** The end of the range of every key starting with `prefix`, as etcdctl's `--prefix`. */
export function prefixEnd(prefix: string): string {
  const bytes = enc.encode(prefix);
  for (let i = bytes.length - 1; i >= 0; i--) {
    if (bytes[i] < 0xff) {
      const end = bytes.slice(0, i + 1);
      end[i] += 1;
      let bin = '';
      for (const b of end) bin += String.fromCharCode(b);
      return btoa(bin);
    }
  }
  return btoa('\0');
}

/** One key as the gateway answers it (int64 fields arrive as strings). */
export interface KeyValue {
  key: string;
  value?: string;
  create_revision?: string;
  mod_revision?: string;
  version?: string;
  lease?: string;
}

/**
 * Reads a streaming gateway call (`/v3/watch`): one JSON object per line, each given to
 * `onMessage`, until `signal` aborts or the server ends the stream.
 */
export async function gwStream(
  path: string,
  body: object,
  onMessage: (m: any) => void,
  signal: AbortSignal,
): Promise<void> {
  const r = await fetch(path, { method: 'POST', headers: headers(true), body: JSON.stringify(body), signal });
  if (!r.ok || !r.body) {
    await answer(r);
    return;
  }
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) onMessage(JSON.parse(line));
    }
  }
}

/** Calls `/mast/v1/…` with a raw body (a zip) and answers the JSON reply. */
export async function mastRaw<T = any>(method: string, path: string, body: Blob, type: string): Promise<T> {
  const h = headers(false);
  h['Content-Type'] = type;
  const r = await fetch(`/mast/v1${path}`, { method, headers: h, body });
  return answer<T>(r);
}

/** GETs `/mast/v1/…` as a file and hands it to the browser as a download named `name`. */
export async function download(path: string, name: string): Promise<void> {
  const r = await fetch(`/mast/v1${path}`, { headers: headers(false) });
  if (!r.ok) await answer(r);
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
