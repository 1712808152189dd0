//! A tiny service built on the Mast SDK: it serves plain HTTP on 127.0.0.1, registers itself,
//! follows a peer service with `watch_service` + `WeightedPicker` (calling it every 2 s), and
//! hot-reloads a typed config with `typed_config`.
//!
//! ```text
//! cargo build -p mast && target/debug/mast serve --data-dir /tmp/mast-demo &
//! export MAST_ENDPOINTS=http://127.0.0.1:2379
//! # two services that call each other:
//! cargo run -p mast-sdk --example service -- orders users
//! cargo run -p mast-sdk --example service -- users orders
//! # change the greeting; every running copy prints the new value:
//! curl -X PUT localhost:2379/mast/v1/configs/public/DEFAULT_GROUP/service.json \
//!      -H 'content-type: application/json' \
//!      -d '{"content":"{\"greeting\":\"hi\"}","format":"json"}'
//! ```
//!
//! Arguments: `[service] [peer]` (defaults `demo` and the same name). `MAST_EXAMPLE_SECS=n`
//! stops it after `n` seconds (else Ctrl-C); it deregisters on the way out.

use std::time::Duration;

use futures::StreamExt;
use mast_sdk::{Client, ClientOptions, ConfigFormat, ConfigId, Instance, WeightedPicker};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The typed config: `public/DEFAULT_GROUP/service.json`.
#[derive(Debug, Deserialize)]
struct Settings {
    greeting: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let service = args.next().unwrap_or_else(|| "demo".into());
    let peer = args.next().unwrap_or_else(|| service.clone());
    let client = Client::connect(ClientOptions::from_env()).await?;

    // The config: publish a default the first time, then follow it.
    let id = ConfigId::new("public", "DEFAULT_GROUP", "service.json")?;
    if client.get_config(&id).await?.is_none() {
        let default = br#"{"greeting":"hello"}"#;
        client
            .publish_config(&id, default, ConfigFormat::Json, "example")
            .await?;
    }
    let mut settings = client.typed_config::<Settings>(&id, None).await?;
    println!("config: greeting = {:?}", settings.get().greeting);

    // A tiny HTTP endpoint on a free port, answering with the current greeting.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let greeting = settings.get();
    let (greet_tx, greet_rx) = tokio::sync::watch::channel(greeting);
    let name = service.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let body = format!("{} from {name}:{port}\n", greet_rx.borrow().greeting);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });

    // Register; the SDK keeps the lease alive and re-registers after a lost lease.
    let instance_id = format!("127.0.0.1:{port}");
    let registration = client
        .register(
            &service,
            &instance_id,
            Instance::new("127.0.0.1", port),
            Duration::from_secs(10),
        )
        .await?;
    println!(
        "registered {} (serving http://127.0.0.1:{port}/)",
        registration.key()
    );

    // Follow the peer service and call one of its instances every 2 s.
    let mut peers = Box::pin(client.watch_service(&peer));
    let mut picker = WeightedPicker::new([]);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let run_for = std::env::var("MAST_EXAMPLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok());
    let stop = async move {
        match run_for {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            Some(set) = peers.next() => {
                let set = set?;
                println!("{peer}: {} instance(s)", set.len());
                picker.update(set);
            }
            value = settings.changed() => {
                // A change may be announced more than once; print real changes only.
                if value.greeting != greet_tx.borrow().greeting {
                    println!("config changed: greeting = {:?}", value.greeting);
                    let _ = greet_tx.send(value);
                }
            }
            _ = tick.tick() => {
                if let Some(p) = picker.pick() {
                    let addr = format!("{}:{}", p.instance.host, p.instance.port);
                    match call(&addr).await {
                        Ok(body) => print!("{peer} @ {addr} says: {body}"),
                        Err(e) => println!("{peer} @ {addr}: {e}"),
                    }
                }
            }
            () = &mut stop => break,
        }
    }
    registration.shutdown().await;
    println!("deregistered");
    Ok(())
}

/// `GET /` on `addr`, returning the body.
async fn call(addr: &str) -> std::io::Result<String> {
    let fut = async {
        let mut sock = TcpStream::connect(addr).await?;
        sock.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        sock.read_to_string(&mut out).await?;
        Ok(out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(out))
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .map_err(|_| std::io::Error::other("timed out"))?
}
