//! The HTTP/2 `:authority` shim under every client connection, fed arbitrary bytes (half of
//! the inputs after the HTTP/2 preface, so the frame and HPACK code is reached): it passes
//! or rewrites them and never panics or stops reading.

use std::sync::LazyLock;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
});

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Runs one input; panics on a finding.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut input = Vec::with_capacity(rest.len() + PREFACE.len());
    if mode % 2 == 0 {
        input.extend_from_slice(PREFACE);
    }
    input.extend_from_slice(rest);
    RT.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(&input).await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut shim = mast_server::authority::AuthorityFixStream::new(server);
        let mut out = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            shim.read_to_end(&mut out),
        )
        .await
        .expect("the shim stops reading at the end of its input");
        let _ = read;
    });
}
