//! Auth tokens, as etcd's `--auth-token`: simple tokens (random strings kept in memory, expiring
//! after a TTL of idleness, renewed on use) or JWTs (signed with a key from a file, carrying the
//! user name, the auth revision and an expiry).
//!
//! A token records the auth revision it was issued at; the server refuses a token older than
//! the current auth revision with `etcdserver: revision of auth store is old`, so clients log in
//! again after any user or role change, as with etcd.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rand::Rng;

/// Who a token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthInfo {
    /// The user name.
    pub user: String,
    /// The auth revision the token was issued at.
    pub revision: u64,
}

/// How tokens are made, parsed from `--auth-token` (`simple` or
/// `jwt,pub-key=<path>,priv-key=<path>,sign-method=<alg>[,ttl=<duration>]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenConfig {
    /// Random strings held in memory.
    Simple,
    /// JSON Web Tokens.
    Jwt {
        /// Algorithm, as etcd's `sign-method` (RS256/384/512, PS256/384/512, ES256/384, HS256/384/512).
        sign_method: String,
        /// Private key (PEM) or, for HS*, the shared secret file.
        priv_key: Option<PathBuf>,
        /// Public key (PEM); for verification only servers.
        pub_key: Option<PathBuf>,
        /// Lifetime of a token.
        ttl: Duration,
    },
}

impl TokenConfig {
    /// Parses etcd's `--auth-token` value.
    ///
    /// # Errors
    /// An unknown token type, option or algorithm, or a JWT setting without a key.
    pub fn parse(s: &str) -> anyhow::Result<TokenConfig> {
        let mut parts = s.split(',');
        match parts.next().unwrap_or_default() {
            "simple" | "" => Ok(TokenConfig::Simple),
            "jwt" => {
                let mut sign_method = None;
                let mut priv_key = None;
                let mut pub_key = None;
                let mut ttl = Duration::from_secs(300);
                for opt in parts {
                    let (k, v) = opt
                        .split_once('=')
                        .with_context(|| format!("--auth-token option {opt:?} is not key=value"))?;
                    match k {
                        "sign-method" => sign_method = Some(v.to_string()),
                        "priv-key" => priv_key = Some(PathBuf::from(v)),
                        "pub-key" => pub_key = Some(PathBuf::from(v)),
                        "ttl" => ttl = parse_duration(v)?,
                        other => bail!("--auth-token: unknown jwt option {other:?}"),
                    }
                }
                let sign_method = sign_method.context("--auth-token jwt needs sign-method=")?;
                if priv_key.is_none() && pub_key.is_none() {
                    bail!("--auth-token jwt needs priv-key= (and/or pub-key=)");
                }
                Ok(TokenConfig::Jwt {
                    sign_method,
                    priv_key,
                    pub_key,
                    ttl,
                })
            }
            other => bail!("--auth-token: unknown token type {other:?} (simple or jwt)"),
        }
    }
}

/// Parses a Go-style duration (`300s`, `5m`, `1h`, or plain seconds).
fn parse_duration(v: &str) -> anyhow::Result<Duration> {
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = num.parse().with_context(|| format!("bad duration {v:?}"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => bail!("bad duration unit in {v:?}"),
    })
}

struct SimpleEntry {
    info: AuthInfo,
    expires: Instant,
}

/// Issues and checks tokens.
pub struct TokenProvider {
    kind: Kind,
}

enum Kind {
    Simple {
        ttl: Duration,
        tokens: Mutex<HashMap<String, SimpleEntry>>,
    },
    Jwt(Box<Jwt>),
}

struct Jwt {
    header: jsonwebtoken::Header,
    encoding: Option<jsonwebtoken::EncodingKey>,
    decoding: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
    ttl: Duration,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

impl TokenProvider {
    /// A provider of simple tokens expiring after `ttl` of idleness (etcd: `--auth-token-ttl`,
    /// default 300 s).
    pub fn simple(ttl: Duration) -> Self {
        TokenProvider {
            kind: Kind::Simple {
                ttl,
                tokens: Mutex::new(HashMap::new()),
            },
        }
    }

    /// A provider for `config`.
    ///
    /// # Errors
    /// When a JWT key file cannot be read or parsed, or the algorithm is unknown.
    pub fn new(config: &TokenConfig, simple_ttl: Duration) -> anyhow::Result<Self> {
        match config {
            TokenConfig::Simple => Ok(Self::simple(simple_ttl)),
            TokenConfig::Jwt {
                sign_method,
                priv_key,
                pub_key,
                ttl,
            } => {
                use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
                let alg: Algorithm = sign_method
                    .parse()
                    .map_err(|_| anyhow::anyhow!("unknown JWT sign-method {sign_method:?}"))?;
                let read = |p: &PathBuf| {
                    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
                };
                let is_hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
                let (encoding, decoding) = if is_hmac {
                    let secret = read(
                        priv_key
                            .as_ref()
                            .context("HS* needs priv-key= (the shared secret)")?,
                    )?;
                    (
                        Some(EncodingKey::from_secret(&secret)),
                        DecodingKey::from_secret(&secret),
                    )
                } else {
                    let is_ec = matches!(alg, Algorithm::ES256 | Algorithm::ES384);
                    let encoding = match priv_key {
                        Some(p) => {
                            let pem = read(p)?;
                            Some(if is_ec {
                                EncodingKey::from_ec_pem(&pem)?
                            } else {
                                EncodingKey::from_rsa_pem(&pem)?
                            })
                        }
                        None => None,
                    };
                    let pem = read(
                        pub_key
                            .as_ref()
                            .context("JWT needs pub-key= to verify tokens")?,
                    )?;
                    let decoding = if is_ec {
                        DecodingKey::from_ec_pem(&pem)?
                    } else {
                        DecodingKey::from_rsa_pem(&pem)?
                    };
                    (encoding, decoding)
                };
                let mut validation = jsonwebtoken::Validation::new(alg);
                validation.required_spec_claims = ["exp"].into_iter().map(String::from).collect();
                validation.leeway = 0;
                Ok(TokenProvider {
                    kind: Kind::Jwt(Box::new(Jwt {
                        header: jsonwebtoken::Header::new(alg),
                        encoding,
                        decoding,
                        validation,
                        ttl: *ttl,
                    })),
                })
            }
        }
    }

    /// Issues a token for `user` at auth revision `revision`, known to this member only (a
    /// server's own tokens; clients get simple tokens through a `SimpleToken` entry, see
    /// [`TokenProvider::new_simple_token`]).
    ///
    /// # Errors
    /// When signing a JWT fails or the server holds only a public key.
    pub fn assign(&self, user: &str, revision: u64) -> anyhow::Result<String> {
        match &self.kind {
            Kind::Simple { ttl, tokens } => {
                let rand: String = rand::rng()
                    .sample_iter(rand::distr::Alphabetic)
                    .take(16)
                    .map(char::from)
                    .collect();
                // Index 0: known here at once, nothing to wait for.
                let token = format!("{rand}.0");
                let mut tokens = tokens.lock().expect("token lock");
                let now = Instant::now();
                tokens.retain(|_, e| e.expires > now);
                tokens.insert(
                    rand,
                    SimpleEntry {
                        info: AuthInfo {
                            user: user.to_string(),
                            revision,
                        },
                        expires: now + *ttl,
                    },
                );
                Ok(token)
            }
            Kind::Jwt(j) => {
                let key = j
                    .encoding
                    .as_ref()
                    .context("this server has no private key to sign tokens")?;
                let exp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    + j.ttl;
                let claims = Claims {
                    username: user.to_string(),
                    revision,
                    exp: exp.as_secs(),
                };
                Ok(jsonwebtoken::encode(&j.header, &claims, key)?)
            }
        }
    }

    /// The random part of a fresh simple token, to propose in a `SimpleToken` entry (see
    /// [`TokenProvider::register`]), or `None` when tokens are JWTs (signed here, needing
    /// nobody else). The token handed to the client is `<prefix>.<index>`, `index` being the
    /// Raft log index of that entry (counted from 1), as etcd's simple tokens: a member that
    /// gets the token before it has applied the entry waits for it
    /// ([`TokenProvider::simple_token_index`]) instead of refusing it.
    pub fn new_simple_token(&self) -> Option<String> {
        match &self.kind {
            Kind::Simple { .. } => Some(
                rand::rng()
                    .sample_iter(rand::distr::Alphabetic)
                    .take(16)
                    .map(char::from)
                    .collect(),
            ),
            Kind::Jwt(_) => None,
        }
    }

    /// The Raft log index (counted from 1) a simple token `<prefix>.<index>` was issued at;
    /// `None` for anything else (a JWT has three dot-separated parts).
    pub fn simple_token_index(&self, token: &str) -> Option<u64> {
        match &self.kind {
            Kind::Simple { .. } => {
                let (_, index) = token.split_once('.')?;
                index.parse().ok()
            }
            Kind::Jwt(_) => None,
        }
    }

    /// Makes simple token `token` valid for `user` at auth revision `revision`: what applying
    /// its `SimpleToken` entry does on every member, as etcd's token assignment on apply.
    pub fn register(&self, token: &str, user: &str, revision: u64) {
        if let Kind::Simple { ttl, tokens, .. } = &self.kind {
            let mut tokens = tokens.lock().expect("token lock");
            let now = Instant::now();
            tokens.retain(|_, e| e.expires > now);
            tokens.insert(
                simple_key(token).to_string(),
                SimpleEntry {
                    info: AuthInfo {
                        user: user.to_string(),
                        revision,
                    },
                    expires: now + *ttl,
                },
            );
        }
    }

    /// True for simple tokens: they are dropped when their user changes, so (as etcd) they are
    /// checked against the current auth revision rather than the one they were issued at.
    pub fn follows_current_revision(&self) -> bool {
        matches!(self.kind, Kind::Simple { .. })
    }

    /// Drops every simple token of `user` (after a password change or delete, as etcd).
    pub fn invalidate_user(&self, user: &str) {
        if let Kind::Simple { tokens, .. } = &self.kind {
            tokens
                .lock()
                .expect("token lock")
                .retain(|_, e| e.info.user != user);
        }
    }

    /// Drops every simple token (when auth is disabled, as etcd).
    pub fn invalidate_all(&self) {
        if let Kind::Simple { tokens, .. } = &self.kind {
            tokens.lock().expect("token lock").clear();
        }
    }

    /// The owner of a valid token (renewing a simple token's TTL), or `None` when the token is
    /// unknown, expired or badly signed.
    pub fn info(&self, token: &str) -> Option<AuthInfo> {
        match &self.kind {
            Kind::Simple { ttl, tokens, .. } => {
                let mut tokens = tokens.lock().expect("token lock");
                let now = Instant::now();
                let key = simple_key(token);
                let e = tokens.get_mut(key)?;
                if e.expires <= now {
                    tokens.remove(key);
                    return None;
                }
                e.expires = now + *ttl;
                Some(e.info.clone())
            }
            Kind::Jwt(j) => {
                let data =
                    jsonwebtoken::decode::<Claims>(token, &j.decoding, &j.validation).ok()?;
                Some(AuthInfo {
                    user: data.claims.username,
                    revision: data.claims.revision,
                })
            }
        }
    }
}

/// What a simple token is kept under: its random part (before the `.<index>` suffix), so the
/// entry that registers it need not know its own index.
fn simple_key(token: &str) -> &str {
    token.split_once('.').map_or(token, |(key, _)| key)
}

/// Slows down password guessing through Authenticate. Failures are counted under three keys:
/// the user from one client address (strict: a few free failures), the user from anywhere, and
/// the address for any user (both lenient, so one misbehaving client does not slow everybody
/// else). Past a key's free failures, each further attempt under it waits for its own time
/// slot, spaced by a gap that doubles per failure up to a cap, so parallel guesses queue instead
/// of multiplying. A success clears the records of that user and address; records expire after
/// a quiet window.
pub struct LoginThrottle {
    entries: Mutex<HashMap<String, ThrottleEntry>>,
    pair_free: u32,
    wide_free: u32,
    base: Duration,
    cap: Duration,
    window: Duration,
}

struct ThrottleEntry {
    failures: u32,
    next_slot: Instant,
    last_failure: Instant,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        LoginThrottle::new(
            3,
            10,
            Duration::from_millis(500),
            Duration::from_secs(30),
            Duration::from_secs(300),
        )
    }
}

impl LoginThrottle {
    /// A throttle that lets `pair_free` failures of one user from one address (and `wide_free`
    /// of one user overall, or of one address overall) through unslowed, then spaces attempts by
    /// `base` doubling per further failure up to `cap`, and forgets a key `window` after its last
    /// failure.
    pub fn new(
        pair_free: u32,
        wide_free: u32,
        base: Duration,
        cap: Duration,
        window: Duration,
    ) -> Self {
        LoginThrottle {
            entries: Mutex::new(HashMap::new()),
            pair_free,
            wide_free,
            base,
            cap,
            window,
        }
    }

    fn keys(user: &str, addr: &str) -> [(String, bool); 3] {
        [
            (format!("pair:{user}@{addr}"), true),
            (format!("user:{user}"), false),
            (format!("addr:{addr}"), false),
        ]
    }

    fn gap(&self, failures: u32, strict: bool) -> Duration {
        let free = if strict {
            self.pair_free
        } else {
            self.wide_free
        };
        if failures < free {
            return Duration::ZERO;
        }
        let doublings = (failures - free).min(16);
        (self.base * 2u32.pow(doublings)).min(self.cap)
    }

    /// Reserves the next attempt slot for `user` from `addr` and returns how long to wait before
    /// checking the password.
    pub fn reserve(&self, user: &str, addr: &str) -> Duration {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("throttle lock");
        entries.retain(|_, e| now.duration_since(e.last_failure) < self.window);
        let mut wait = Duration::ZERO;
        for (key, strict) in Self::keys(user, addr) {
            if let Some(e) = entries.get_mut(&key) {
                let gap = self.gap(e.failures, strict);
                if gap.is_zero() {
                    continue;
                }
                let start = e.next_slot.max(now);
                wait = wait.max(start - now);
                e.next_slot = start + gap;
            }
        }
        wait
    }

    /// Records the outcome of an attempt.
    pub fn record(&self, user: &str, addr: &str, ok: bool) {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("throttle lock");
        for (key, strict) in Self::keys(user, addr) {
            if ok {
                entries.remove(&key);
            } else {
                let e = entries.entry(key).or_insert(ThrottleEntry {
                    failures: 0,
                    next_slot: now,
                    last_failure: now,
                });
                e.failures += 1;
                e.last_failure = now;
                let gap = self.gap(e.failures, strict);
                e.next_slot = e.next_slot.max(now + gap);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_tokens_expire_when_idle() {
        let p = TokenProvider::simple(Duration::from_millis(50));
        let t = p.assign("root", 3).unwrap();
        assert_eq!(
            p.info(&t),
            Some(AuthInfo {
                user: "root".into(),
                revision: 3
            })
        );
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(p.info(&t), None);
        assert_eq!(p.info("nope"), None);
    }

    #[test]
    fn parses_auth_token_flag() {
        assert_eq!(TokenConfig::parse("simple").unwrap(), TokenConfig::Simple);
        let j = TokenConfig::parse("jwt,pub-key=a.pub,priv-key=a.key,sign-method=RS256,ttl=10m")
            .unwrap();
        assert_eq!(
            j,
            TokenConfig::Jwt {
                sign_method: "RS256".into(),
                priv_key: Some("a.key".into()),
                pub_key: Some("a.pub".into()),
                ttl: Duration::from_secs(600)
            }
        );
        assert!(TokenConfig::parse("jwt,sign-method=RS256").is_err());
        assert!(TokenConfig::parse("magic").is_err());
    }

    #[test]
    fn hmac_jwt_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secret");
        std::fs::write(&key, b"0123456789abcdef0123456789abcdef").unwrap();
        let cfg = TokenConfig::Jwt {
            sign_method: "HS256".into(),
            priv_key: Some(key),
            pub_key: None,
            ttl: Duration::from_secs(60),
        };
        let p = TokenProvider::new(&cfg, Duration::from_secs(300)).unwrap();
        let t = p.assign("alice", 7).unwrap();
        assert_eq!(
            p.info(&t),
            Some(AuthInfo {
                user: "alice".into(),
                revision: 7
            })
        );
        let mut forged = t.clone();
        forged.push('x');
        assert_eq!(p.info(&forged), None);
    }

    #[test]
    fn throttle_spaces_attempts_after_free_failures() {
        let t = LoginThrottle::new(
            2,
            4,
            Duration::from_millis(100),
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        for _ in 0..2 {
            assert_eq!(t.reserve("root", "1.2.3.4"), Duration::ZERO);
            t.record("root", "1.2.3.4", false);
        }
        // Third failure onwards: attempts of root from that address queue behind each other.
        let w1 = t.reserve("root", "1.2.3.4");
        let w2 = t.reserve("root", "1.2.3.4");
        assert!(w1 > Duration::from_millis(50), "{w1:?}");
        assert!(w2 > w1, "parallel guesses queue: {w1:?} then {w2:?}");
        // Another user from another address is not slowed, nor another user from the same
        // address while the address is under its wider allowance.
        assert_eq!(t.reserve("bob", "5.5.5.5"), Duration::ZERO);
        assert_eq!(t.reserve("bob", "1.2.3.4"), Duration::ZERO);
        // Success clears the record.
        t.record("root", "1.2.3.4", true);
        assert_eq!(t.reserve("root", "1.2.3.4"), Duration::ZERO);
    }
}
