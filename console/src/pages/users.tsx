// Users, roles and permissions: etcd's auth API through its JSON gateway (`user add / delete /
// passwd / grant-role / revoke-role`, `role add / delete / grant-permission /
// revoke-permission`), for root only, as etcd allows.
import { useState } from 'preact/hooks';
import { b64, gw, prefixEnd, unb64, unb64bytes } from '../api';
import type { Session } from '../session';
import { ErrorLine, useLoad } from '../components';

interface PermView {
  permType?: string;
  key?: string;
  range_end?: string;
}

/** A permission's range as etcdctl prints it: a key, a prefix, `[key, end)` or `key` and after. */
function describe(p: PermView): string {
  const key = unb64(p.key);
  const end = unb64bytes(p.range_end);
  if (end.length === 0) return key;
  if (end.length === 1 && end[0] === 0) return `${key} and every key after`;
  if (p.range_end === prefixEnd(key)) return `${key}* (prefix)`;
  return `[${key}, ${unb64(p.range_end)})`;
}

function Users(props: { roles: string[] }) {
  const [users, error, reload] = useLoad(async () => (await gw<{ users?: string[] }>('/v3/auth/user/list')).users ?? [], []);
  const [chosen, setChosen] = useState<string | null>(null);
  const [err, setErr] = useState<unknown>();
  const [detail, , reloadDetail] = useLoad(
    async () => (chosen ? (await gw<{ roles?: string[] }>('/v3/auth/user/get', { name: chosen })).roles ?? [] : []),
    [chosen],
  );
  async function run(f: () => Promise<unknown>, after: () => void) {
    setErr(undefined);
    try {
      await f();
      after();
    } catch (e) {
      setErr(e);
    }
  }
  return (
    <section aria-labelledby="users-title" class="panel">
      <h2 id="users-title">Users</h2>
      <ErrorLine error={error || err} />
      <ul class="plain">
        {(users ?? []).map((u) => (
          <li key={u}>
            <button type="button" class="link" aria-pressed={u === chosen} onClick={() => setChosen(u)}>
              {u}
            </button>
          </li>
        ))}
      </ul>
      <form
        class="inline"
        onSubmit={(e) => {
          e.preventDefault();
          const form = e.target as HTMLFormElement;
          const f = new FormData(form);
          run(() => gw('/v3/auth/user/add', { name: String(f.get('name')), password: String(f.get('password')) }), () => {
            form.reset();
            reload();
          });
        }}
      >
        <label>
          New user <input name="name" required autocomplete="off" />
        </label>
        <label>
          Password <input name="password" type="password" required autocomplete="new-password" />
        </label>
        <button type="submit">Add user</button>
      </form>
      {chosen && (
        <article aria-labelledby="user-title">
          <h3 id="user-title">User {chosen}</h3>
          <p>Roles:</p>
          <ul class="plain">
            {(detail ?? []).map((r) => (
              <li key={r}>
                {r}{' '}
                <button type="button" class="ghost" onClick={() => run(() => gw('/v3/auth/user/revoke', { name: chosen, role: r }), reloadDetail)}>
                  Revoke {r}
                </button>
              </li>
            ))}
          </ul>
          <form
            class="inline"
            onSubmit={(e) => {
              e.preventDefault();
              const role = String(new FormData(e.target as HTMLFormElement).get('role'));
              run(() => gw('/v3/auth/user/grant', { user: chosen, role }), reloadDetail);
            }}
          >
            <label>
              Role{' '}
              <select name="role" aria-label="Role to grant">
                {props.roles.map((r) => (
                  <option value={r}>{r}</option>
                ))}
              </select>
            </label>
            <button type="submit">Grant role</button>
          </form>
          <form
            class="inline"
            onSubmit={(e) => {
              e.preventDefault();
              const form = e.target as HTMLFormElement;
              const password = String(new FormData(form).get('password'));
              run(() => gw('/v3/auth/user/changepw', { name: chosen, password }), () => form.reset());
            }}
          >
            <label>
              New password <input name="password" type="password" required autocomplete="new-password" />
            </label>
            <button type="submit">Change password</button>
          </form>
          <button
            type="button"
            class="danger"
            onClick={() =>
              confirm(`Delete user ${chosen}?`) &&
              run(() => gw('/v3/auth/user/delete', { name: chosen }), () => {
                setChosen(null);
                reload();
              })
            }
          >
            Delete user {chosen}
          </button>
        </article>
      )}
    </section>
  );
}

function Roles(props: { roles: string[]; reload: () => void }) {
  const [chosen, setChosen] = useState<string | null>(null);
  const [err, setErr] = useState<unknown>();
  const [perms, error, reloadPerms] = useLoad(
    async () => (chosen ? (await gw<{ perm?: PermView[] }>('/v3/auth/role/get', { role: chosen })).perm ?? [] : []),
    [chosen],
  );
  async function run(f: () => Promise<unknown>, after: () => void) {
    setErr(undefined);
    try {
      await f();
      after();
    } catch (e) {
      setErr(e);
    }
  }
  return (
    <section aria-labelledby="roles-title" class="panel">
      <h2 id="roles-title">Roles</h2>
      <ErrorLine error={error || err} />
      <ul class="plain">
        {props.roles.map((r) => (
          <li key={r}>
            <button type="button" class="link" aria-pressed={r === chosen} onClick={() => setChosen(r)}>
              {r}
            </button>
          </li>
        ))}
      </ul>
      <form
        class="inline"
        onSubmit={(e) => {
          e.preventDefault();
          const form = e.target as HTMLFormElement;
          const name = String(new FormData(form).get('name'));
          run(() => gw('/v3/auth/role/add', { name }), () => {
            form.reset();
            props.reload();
          });
        }}
      >
        <label>
          New role <input name="name" required autocomplete="off" />
        </label>
        <button type="submit">Add role</button>
      </form>
      {chosen && (
        <article aria-labelledby="role-title">
          <h3 id="role-title">Role {chosen}</h3>
          {chosen === 'root' && <p class="hint">The root role may do everything; its power is not listed as permissions.</p>}
          <div class="table-wrap" tabIndex={0} role="region" aria-label="Scrollable table">
            <table>
              <thead>
                <tr>
                  <th scope="col">Permission</th>
                  <th scope="col">Keys</th>
                  <th scope="col">
                    <span class="sr-only">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {(perms ?? []).map((p) => (
                  <tr key={`${p.key}-${p.range_end}`}>
                    <td>{p.permType ?? 'READ'}</td>
                    <td>
                      <code>{describe(p)}</code>
                    </td>
                    <td>
                      <button
                        type="button"
                        class="ghost"
                        onClick={() => run(() => gw('/v3/auth/role/revoke', { role: chosen, key: p.key, range_end: p.range_end }), reloadPerms)}
                      >
                        Revoke
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <form
            class="inline"
            onSubmit={(e) => {
              e.preventDefault();
              const f = new FormData(e.target as HTMLFormElement);
              const key = String(f.get('key'));
              const perm: Record<string, string> = { permType: String(f.get('type')), key: b64(key) };
              if (f.get('prefix')) perm.range_end = prefixEnd(key);
              run(() => gw('/v3/auth/role/grant', { name: chosen, perm }), reloadPerms);
            }}
          >
            <label>
              Type{' '}
              <select name="type" aria-label="Permission type">
                <option>READ</option>
                <option>WRITE</option>
                <option>READWRITE</option>
              </select>
            </label>
            <label>
              Key <input name="key" required />
            </label>
            <label>
              <input type="checkbox" name="prefix" value="1" checked /> as a prefix
            </label>
            <button type="submit">Grant permission</button>
          </form>
          {chosen !== 'root' && (
            <button
              type="button"
              class="danger"
              onClick={() =>
                confirm(`Delete role ${chosen}?`) &&
                run(() => gw('/v3/auth/role/delete', { role: chosen }), () => {
                  setChosen(null);
                  props.reload();
                })
              }
            >
              Delete role {chosen}
            </button>
          )}
        </article>
      )}
    </section>
  );
}

export function UsersPage(props: { session: Session }) {
  const [roles, error, reload] = useLoad(async () => (await gw<{ roles?: string[] }>('/v3/auth/role/list')).roles ?? [], []);
  return (
    <section aria-labelledby="access-title">
      <h1 id="access-title">Users and roles</h1>
      {!props.session.authEnabled && (
        <p class="hint">
          Auth is off: every client may do everything. Add a user <code>root</code> with the role <code>root</code>, then
          enable auth (<code>etcdctl auth enable</code>), or start the server with <code>MAST_ROOT_PASSWORD</code>.
        </p>
      )}
      <ErrorLine error={error} />
      <div class="columns">
        <Users roles={roles ?? []} />
        <Roles roles={roles ?? []} reload={reload} />
      </div>
    </section>
  );
}
