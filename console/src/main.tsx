// The console's shell: sign-in, navigation, theme, and the page the address names
// (`#/overview`, `#/keys?prefix=/a/`, `#/configs/<ns>/<group>/<dataId>`, …).
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { onSessionEnd, setToken, currentToken } from './api';
import { authEnabled, authenticate, loadSession, mayUnder, type Session } from './session';
import { ErrorLine } from './components';
import { Overview } from './pages/overview';
import { Keys } from './pages/keys';
import { Configs } from './pages/configs';
import { Services } from './pages/services';
import { Events } from './pages/events';
import { UsersPage } from './pages/users';

/** The current route: the hash without `#/`, split at `?`. */
function route(): { path: string[]; query: URLSearchParams } {
  const h = location.hash.replace(/^#\/?/, '');
  const [p, q] = h.split('?', 2);
  return { path: p ? p.split('/').map(decodeURIComponent) : [], query: new URLSearchParams(q ?? '') };
}

function useRoute() {
  const [r, setR] = useState(route);
  useEffect(() => {
    const f = () => setR(route());
    addEventListener('hashchange', f);
    return () => removeEventListener('hashchange', f);
  }, []);
  return r;
}

function initialTheme(): 'light' | 'dark' {
  const saved = localStorage.getItem('mast.theme');
  if (saved === 'light' || saved === 'dark') return saved;
  return matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
}

function Login(props: { onSignedIn: (user: string) => void }) {
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  async function submit(e: Event) {
    e.preventDefault();
    const f = new FormData(e.target as HTMLFormElement);
    const user = String(f.get('user'));
    setBusy(true);
    setError(undefined);
    try {
      setToken(await authenticate(user, String(f.get('password'))));
      sessionStorage.setItem('mast.user', user);
      props.onSignedIn(user);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }
  return (
    <main class="login">
      <form onSubmit={submit} aria-labelledby="login-title">
        <h1 id="login-title">Sign in to Mast</h1>
        <label>
          User
          <input name="user" autocomplete="username" required autofocus />
        </label>
        <label>
          Password
          <input name="password" type="password" autocomplete="current-password" required />
        </label>
        <ErrorLine error={error} />
        <button type="submit" disabled={busy}>
          Sign in
        </button>
      </form>
    </main>
  );
}

const PAGES: { id: string; title: string; prefix: string }[] = [
  { id: 'overview', title: 'Overview', prefix: '' },
  { id: 'keys', title: 'Keys', prefix: '' },
  { id: 'services', title: 'Services', prefix: '/services/' },
  { id: 'configs', title: 'Configs', prefix: '/configs/' },
  { id: 'events', title: 'Events', prefix: '' },
  { id: 'users', title: 'Users', prefix: '' },
];

// Before the first render: editors read the theme when they are made (child effects run
// before the shell's).
document.documentElement.dataset.theme = initialTheme();

function App() {
  const [theme, setTheme] = useState(initialTheme);
  const [session, setSession] = useState<Session | null>(null);
  const [needLogin, setNeedLogin] = useState(false);
  const [error, setError] = useState<unknown>();
  const r = useRoute();

  async function start(user: string | null) {
    try {
      setSession(await loadSession(user));
      setNeedLogin(false);
    } catch (e) {
      setError(e);
    }
  }

  useEffect(() => {
    (async () => {
      try {
        const on = await authEnabled();
        const user = sessionStorage.getItem('mast.user');
        if (!on) await start(null);
        else if (currentToken() && user) await start(user);
        else setNeedLogin(true);
      } catch (e) {
        setError(e);
      }
    })();
    return onSessionEnd(() => signOut());
  }, []);

  function signOut() {
    setToken(null);
    sessionStorage.removeItem('mast.user');
    setSession(null);
    setNeedLogin(true);
  }

  if (needLogin) return <Login onSignedIn={(u) => start(u)} />;
  if (!session) return <main class="loading">{error ? <ErrorLine error={error} /> : 'Loading…'}</main>;

  const page = r.path[0] || 'overview';
  const visible = PAGES.filter((p) => (p.id === 'users' ? session.root : !p.prefix || mayUnder(session, 'read', p.prefix)));
  const toggle = () => {
    const t = theme === 'dark' ? 'light' : 'dark';
    localStorage.setItem('mast.theme', t);
    // Set before the re-render: the pages remount (keyed by the theme) and their editors read
    // the theme when they are made, in effects that run before any of this component's.
    document.documentElement.dataset.theme = t;
    setTheme(t);
  };
  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <span class="brand">Mast</span>
        <nav aria-label="Sections">
          {visible.map((p) => (
            <a href={`#/${p.id}`} aria-current={page === p.id ? 'page' : undefined}>
              {p.title}
            </a>
          ))}
        </nav>
        <span class="who">
          {session.user ? `Signed in as ${session.user}` : 'Auth off'}
          <button type="button" class="ghost" onClick={toggle} aria-label={`Switch to ${theme === 'dark' ? 'light' : 'dark'} theme`}>
            {theme === 'dark' ? '☀' : '☾'}
          </button>
          {session.user && (
            <button type="button" class="ghost" onClick={signOut}>
              Sign out
            </button>
          )}
        </span>
      </header>
      <main id="main" tabIndex={-1} key={theme}>
        {page === 'overview' && <Overview session={session} />}
        {page === 'keys' && <Keys session={session} query={r.query} />}
        {page === 'services' && <Services session={session} path={r.path.slice(1)} />}
        {page === 'configs' && <Configs session={session} path={r.path.slice(1)} query={r.query} />}
        {page === 'events' && <Events session={session} query={r.query} />}
        {page === 'users' && session.root && <UsersPage session={session} />}
        {!PAGES.some((p) => p.id === page) && <p>No page “{page}”.</p>}
      </main>
    </>
  );
}

render(<App />, document.getElementById('app')!);
