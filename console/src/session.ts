// Who is signed in and what they may do, read the way etcdctl would: `auth status`, then the
// user's own roles (`user get` of oneself) and each role's permissions (`role get` of a role one
// holds) — calls etcd lets any user make about themselves. The console uses this only to offer
// what will work; the server checks every call anyway.
import { b64, gw, unb64bytes } from './api';

/** One key range of a role: `[key, end)`, end empty for the one key, `\0` for "from key on". */
export interface Perm {
  read: boolean;
  write: boolean;
  key: Uint8Array;
  end: Uint8Array;
}

/** The signed-in user: `user` is null with auth off (everything is allowed). */
export interface Session {
  authEnabled: boolean;
  user: string | null;
  root: boolean;
  perms: Perm[];
}

/** Reads whether auth is on (no token needed). */
export async function authEnabled(): Promise<boolean> {
  const s = await gw<{ enabled?: boolean }>('/v3/auth/status');
  return !!s.enabled;
}

/** Exchanges a password for a token, as `etcdctl --user`. */
export async function authenticate(name: string, password: string): Promise<string> {
  const r = await gw<{ token: string }>('/v3/auth/authenticate', { name, password });
  return r.token;
}

/** Loads the session of `user` (null with auth off). */
export async function loadSession(user: string | null): Promise<Session> {
  if (user === null) return { authEnabled: false, user: null, root: true, perms: [] };
  const u = await gw<{ roles?: string[] }>('/v3/auth/user/get', { name: user });
  const roles = u.roles ?? [];
  const perms: Perm[] = [];
  for (const role of roles) {
    if (role === 'root') continue;
    const r = await gw<{ perm?: { permType?: string; key?: string; range_end?: string }[] }>(
      '/v3/auth/role/get',
      { role },
    );
    for (const p of r.perm ?? []) {
      const t = p.permType ?? 'READ';
      perms.push({
        read: t === 'READ' || t === 'READWRITE',
        write: t === 'WRITE' || t === 'READWRITE',
        key: unb64bytes(p.key),
        end: unb64bytes(p.range_end),
      });
    }
  }
  return { authEnabled: true, user, root: roles.includes('root'), perms };
}

function cmp(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

const enc = new TextEncoder();

function covers(p: Perm, key: Uint8Array): boolean {
  if (p.end.length === 0) return cmp(p.key, key) === 0;
  if (p.end.length === 1 && p.end[0] === 0) return cmp(key, p.key) >= 0;
  return cmp(key, p.key) >= 0 && cmp(key, p.end) < 0;
}

/** Whether the session may `op` the one key `key` (as etcd's permission check). */
export function may(s: Session, op: 'read' | 'write', key: string): boolean {
  if (s.root) return true;
  const k = enc.encode(key);
  return s.perms.some((p) => p[op] && covers(p, k));
}

/**
 * Whether the session may `op` some key starting with `prefix` (to decide what to offer: a
 * section appears when any of it is reachable).
 */
export function mayUnder(s: Session, op: 'read' | 'write', prefix: string): boolean {
  if (s.root) return true;
  const lo = enc.encode(prefix);
  return s.perms.some((p) => {
    if (!p[op]) return false;
    // The permission's range and the prefix's range overlap.
    if (covers(p, lo)) return true;
    const k = p.key;
    return k.length >= lo.length && cmp(k.slice(0, lo.length), lo) === 0;
  });
}

/** The prefixes the session may read, as text (for a user limited to part of the key space). */
export function readablePrefixes(s: Session): string[] {
  if (s.root) return [''];
  const dec = new TextDecoder();
  return s.perms.filter((p) => p.read).map((p) => dec.decode(p.key));
}

export { b64 };
