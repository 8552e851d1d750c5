//! The `tcp` source: newline-delimited JSON from many clients at once. When the pipeline is
//! full it stops reading sockets (TCP flow control pushes back on the senders); at
//! `max_connections` it stops accepting until a client leaves.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;

use super::lines::LineFramer;
use super::{SourceContext, default_max_line_bytes, pump};
use crate::sinks::dead_letter::Origin;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// Address to listen on (default `127.0.0.1:9000`, loopback only).
    #[serde(default = "default_address")]
    pub address: String,
    /// Longest accepted line in bytes (default 64 MiB); longer lines are dead letters.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Clients served at once (default 1024); more wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_address() -> String {
    "127.0.0.1:9000".into()
}

fn default_max_connections() -> usize {
    1024
}

/// Bytes read from a socket before its lines are decoded; small, so events move at once.
const SOCKET_CHUNK_BYTES: usize = 256 * 1024;

impl TcpConfig {
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.address.parse::<SocketAddr>().is_err() {
            problems.push((
                "address".into(),
                format!(
                    "{:?} is not a socket address; write IP:PORT, for example \"127.0.0.1:9000\"",
                    self.address
                ),
            ));
        }
        if self.max_connections == 0 {
            problems.push(("max_connections".into(), "must be at least 1".into()));
        }
        problems
    }
}

pub async fn run(config: TcpConfig, ctx: SourceContext) -> std::io::Result<()> {
    let listener = TcpListener::bind(&config.address).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {}: {e}; change sources.{}.address",
                config.address, ctx.name
            ),
        )
    })?;
    tracing::info!(source = %ctx.name, "Listening on {}.", listener.local_addr()?);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
        };
        let (socket, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(source = %ctx.name, "Accepting a connection failed: {e}.");
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        let max_line_bytes = config.max_line_bytes;
        connections.spawn(async move {
            let origin = Origin::new(&ctx.name).with_connection(&peer.to_string());
            let framer = LineFramer::new(max_line_bytes, SOCKET_CHUNK_BYTES);
            let frames = FramedRead::with_capacity(socket, framer, 64 * 1024);
            if let Err(e) = pump(frames, origin, &ctx, max_line_bytes, |_, _, _| {}).await {
                tracing::warn!(source = %ctx.name, "Connection from {peer} ended: {e}.");
            }
            drop(permit);
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}
