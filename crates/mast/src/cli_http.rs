//! Client commands served by Mast's HTTP API rather than the etcd gRPC API: `mast audit …`
//! (`/mast/v1/audit`) and `mast config rollout` (`/mast/v1/configs/…/rollout`), on the first
//! endpoint (plain HTTP; with `--user`, logged in through the etcd JSON gateway's
//! `/v3/auth/authenticate`).

use anyhow::{Context, bail};
use clap::Subcommand;
use comfy_table::Table;
use serde_json::Value;

use crate::cli::{Format, Global};

/// `mast audit …`.
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Lists audit entries, oldest first: who changed which config, instance, service
    /// setting, override, namespace, user, role or permission, from where, through which API.
    List {
        /// Entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Most entries (1–1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Only changes by this user.
        #[arg(long = "by")]
        by: Option<String>,
        /// Only `put`, `delete` or `auth`.
        #[arg(long)]
        action: Option<String>,
    },
    /// Checks the hash chain of the audit log on the endpoint's member; fails when it is
    /// broken.
    Verify,
}

/// The base URL of the first endpoint.
fn base(g: &Global) -> anyhow::Result<String> {
    let ep = g
        .endpoint_list()
        .into_iter()
        .next()
        .context("no endpoint given")?;
    if ep.starts_with("https://") {
        bail!("mast audit speaks plain HTTP only; use curl with the CA for {ep}/mast/v1/audit");
    }
    Ok(format!(
        "http://{}",
        ep.trim_start_matches("http://").trim_end_matches('/')
    ))
}

/// The `Authorization` header value, when credentials were given.
async fn token(g: &Global, http: &reqwest::Client, base: &str) -> anyhow::Result<Option<String>> {
    let (user, password) = g.credentials();
    let Some(user) = user else { return Ok(None) };
    let resp = http
        .post(format!("{base}/v3/auth/authenticate"))
        .json(&serde_json::json!({"name": user, "password": password.unwrap_or_default()}))
        .send()
        .await
        .context("logging in")?;
    let status = resp.status();
    let body: Value = resp.json().await.context("reading the login answer")?;
    match body["token"].as_str() {
        Some(t) if status.is_success() => Ok(Some(t.to_string())),
        _ => bail!(
            "login as {user} failed: {}",
            body["message"].as_str().unwrap_or("no token")
        ),
    }
}

async fn get(g: &Global, path_and_query: &str) -> anyhow::Result<Value> {
    call(g, reqwest::Method::GET, path_and_query, None).await
}

/// One call of Mast's HTTP API; a non-2xx answer is an error with the API's message.
async fn call(
    g: &Global,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let base = base(g)?;
    let token = token(g, &http, &base).await?;
    let mut req = http.request(method, format!("{base}{path_and_query}"));
    if let Some(t) = token {
        req = req.header("Authorization", t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("calling {base}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.context("reading the answer")?;
    if !status.is_success() {
        bail!(
            "{}: {}",
            status,
            body["error"].as_str().unwrap_or("request failed")
        );
    }
    Ok(body)
}

fn when(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn short(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.chars().count() > 40 => {
            format!("{}…", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs `mast audit …`.
///
/// # Errors
/// Connection, login and server errors; a broken chain for `verify`.
pub async fn run(g: &Global, cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::List {
            after,
            limit,
            prefix,
            by,
            action,
        } => {
            let mut q = format!("/mast/v1/audit?after={after}&limit={limit}");
            for (name, v) in [("prefix", prefix), ("user", by), ("action", action)] {
                if let Some(v) = v {
                    q.push_str(&format!("&{name}={}", segment(&v)));
                }
            }
            let page = get(g, &q).await?;
            let entries = page["entries"].as_array().cloned().unwrap_or_default();
            match g.write_out {
                Format::Json => println!("{page}"),
                Format::Table => {
                    let mut t = Table::new();
                    t.set_header([
                        "SEQ", "TIME", "USER", "ADDRESS", "API", "ACTION", "KEY", "BEFORE", "AFTER",
                    ]);
                    for e in &entries {
                        let what = if e["action"] == "auth" {
                            e["detail"].clone()
                        } else {
                            e["key"].clone()
                        };
                        t.add_row([
                            e["seq"].to_string(),
                            when(e["time"].as_u64().unwrap_or(0)),
                            short(&e["user"]),
                            short(&e["address"]),
                            short(&e["api"]),
                            short(&e["action"]),
                            short(&what),
                            short(&e["before"]),
                            short(&e["after"]),
                        ]);
                    }
                    println!("{t}");
                }
                Format::Simple => {
                    for e in &entries {
                        let what = if e["action"] == "auth" {
                            short(&e["detail"])
                        } else {
                            short(&e["key"])
                        };
                        println!(
                            "{} {} {} {} {} {} {what}",
                            e["seq"],
                            when(e["time"].as_u64().unwrap_or(0)),
                            short(&e["user"]),
                            short(&e["address"]),
                            short(&e["api"]),
                            short(&e["action"]),
                        );
                    }
                }
            }
        }
        AuditCmd::Verify => {
            let r = get(g, "/mast/v1/audit/verify").await?;
            if g.write_out == Format::Json {
                println!("{r}");
            }
            if r["ok"] != true {
                bail!(
                    "audit chain broken at entry {}: {}",
                    r["brokenAt"],
                    r["error"].as_str().unwrap_or("")
                );
            }
            if g.write_out != Format::Json {
                println!(
                    "audit chain intact: {} entries ({}..{}), head {}",
                    r["entries"],
                    r["first"],
                    r["last"],
                    r["head"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

/// Percent-encodes a path segment or query value (everything but RFC 3986's unreserved).
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `mast config rollout`.
///
/// # Errors
/// A bad name; connection, login and server errors.
pub async fn rollout(g: &Global, r: &crate::cli::ConfigRef) -> anyhow::Result<()> {
    let id = r.id()?;
    let path = format!(
        "/mast/v1/configs/{}/{}/{}/rollout",
        segment(&id.namespace),
        segment(&id.group),
        segment(&id.data_id)
    );
    let v = get(g, &path).await?;
    if g.write_out == Format::Json {
        println!("{v}");
        return Ok(());
    }
    let version = v["version"]
        .as_u64()
        .map_or_else(|| "-".to_string(), |n| n.to_string());
    println!(
        "version {version} (md5 {}): {}/{} clients{}",
        v["md5"].as_str().unwrap_or(""),
        v["onCurrent"],
        v["clients"],
        match v["tookMs"].as_u64() {
            Some(ms) => format!(", reached everyone in {ms} ms"),
            None if v["complete"] == true => String::new(),
            None => ", in progress".to_string(),
        }
    );
    let mut t = Table::new();
    t.set_header(["VERSION", "MD5", "CURRENT", "CLIENTS"]);
    for row in v["versions"].as_array().into_iter().flatten() {
        let clients: Vec<&str> = row["clients"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        t.add_row([
            row["version"]
                .as_u64()
                .map_or_else(|| "-".to_string(), |n| n.to_string()),
            short(&row["md5"]),
            row["current"].to_string(),
            clients.join(", "),
        ]);
    }
    println!("{t}");
    for l in v["lagging"].as_array().into_iter().flatten() {
        println!(
            "lagging: {} ({}) holds md5 {} since {}",
            l["clientId"].as_str().unwrap_or(""),
            l["via"].as_str().unwrap_or(""),
            l["md5"].as_str().unwrap_or(""),
            when(l["appliedAt"].as_u64().unwrap_or(0))
        );
    }
    Ok(())
}

/// `mast config gray …`.
#[derive(Subcommand, Debug)]
pub enum GrayCmd {
    /// Lists a config's gray releases.
    List(crate::cli::ConfigRef),
    /// Publishes or changes a gray release: content from a file (or `-` for stdin; omit to
    /// keep the gray's content) for the clients a rule chooses.
    Set {
        #[command(flatten)]
        config: crate::cli::ConfigRef,
        /// The gray release's name.
        #[arg(long)]
        name: String,
        /// File with the content, or `-`.
        #[arg(long)]
        file: Option<String>,
        /// Clients with these labels (`k=v`, repeatable).
        #[arg(long = "label", conflicts_with_all = ["ip", "percentage"])]
        labels: Vec<String>,
        /// Clients at these addresses (repeatable).
        #[arg(long, conflicts_with = "percentage")]
        ip: Vec<String>,
        /// This share of client ids, 0–100.
        #[arg(long)]
        percentage: Option<f64>,
        /// Higher first when several match.
        #[arg(long)]
        priority: Option<i32>,
    },
    /// Makes a gray's content the config's next version.
    Promote {
        #[command(flatten)]
        config: crate::cli::ConfigRef,
        /// The gray release's name.
        #[arg(long)]
        name: String,
    },
    /// Stops a gray release: its clients fall back.
    Stop {
        #[command(flatten)]
        config: crate::cli::ConfigRef,
        /// The gray release's name.
        #[arg(long)]
        name: String,
    },
}

fn gray_path(r: &crate::cli::ConfigRef) -> anyhow::Result<String> {
    let id = r.id()?;
    Ok(format!(
        "/mast/v1/configs/{}/{}/{}/gray",
        segment(&id.namespace),
        segment(&id.group),
        segment(&id.data_id)
    ))
}

/// Runs `mast config gray …`.
///
/// # Errors
/// A bad name or rule; connection, login and server errors.
pub async fn gray(g: &Global, cmd: GrayCmd) -> anyhow::Result<()> {
    let v = match cmd {
        GrayCmd::List(r) => {
            let v = get(g, &gray_path(&r)?).await?;
            if g.write_out != Format::Json {
                let mut t = Table::new();
                t.set_header(["NAME", "RULE", "PRIORITY", "MD5", "AUTHOR", "UPDATED"]);
                for gr in v["grays"].as_array().into_iter().flatten() {
                    t.add_row([
                        short(&gr["name"]),
                        gr["rule"].to_string(),
                        gr["priority"].to_string(),
                        short(&gr["md5"]),
                        short(&gr["author"]),
                        when(gr["updatedAt"].as_u64().unwrap_or(0)),
                    ]);
                }
                println!("{t}");
                return Ok(());
            }
            v
        }
        GrayCmd::Set {
            config,
            name,
            file,
            labels,
            ip,
            percentage,
            priority,
        } => {
            let rule = match (labels.is_empty(), ip.is_empty(), percentage) {
                (false, _, _) => {
                    let mut m = serde_json::Map::new();
                    for l in &labels {
                        let (k, v) = l.split_once('=').context("--label takes k=v")?;
                        m.insert(k.to_string(), Value::String(v.to_string()));
                    }
                    serde_json::json!({"type": "labels", "labels": m})
                }
                (_, false, _) => serde_json::json!({"type": "ip", "ips": ip}),
                (_, _, Some(p)) => serde_json::json!({"type": "percentage", "percentage": p}),
                _ => bail!("give --label, --ip or --percentage"),
            };
            let mut body = serde_json::json!({ "rule": rule });
            if let Some(f) = file {
                let content = if f == "-" {
                    std::io::read_to_string(std::io::stdin())?
                } else {
                    std::fs::read_to_string(&f).with_context(|| format!("reading {f}"))?
                };
                body["content"] = Value::String(content);
            }
            if let Some(p) = priority {
                body["priority"] = p.into();
            }
            let path = format!("{}/{}", gray_path(&config)?, segment(&name));
            call(g, reqwest::Method::PUT, &path, Some(body)).await?
        }
        GrayCmd::Promote { config, name } => {
            let path = format!("{}/{}/promote", gray_path(&config)?, segment(&name));
            call(g, reqwest::Method::POST, &path, None).await?
        }
        GrayCmd::Stop { config, name } => {
            let path = format!("{}/{}", gray_path(&config)?, segment(&name));
            call(g, reqwest::Method::DELETE, &path, None).await?
        }
    };
    if g.write_out == Format::Json {
        println!("{v}");
    } else if let Some(n) = v["historyVersion"].as_u64() {
        println!("recorded as history version {n}");
    } else if let Some(n) = v["version"].as_u64() {
        println!("promoted as version {n}");
    } else {
        println!("{v}");
    }
    Ok(())
}
