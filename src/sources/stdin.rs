//! The `stdin` source: `executor | evalsink run`. Reads until EOF (or shutdown); there is no
//! checkpoint to keep, so acknowledgements only count.

use serde::Deserialize;
use tokio_util::codec::FramedRead;

use super::lines::LineFramer;
use super::{CHUNK_BYTES, SourceContext, default_max_line_bytes, pump};
use crate::sinks::dead_letter::Origin;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StdinConfig {
    /// Longest accepted line in bytes (default 64 MiB); longer lines are dead letters.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
}

impl Default for StdinConfig {
    fn default() -> Self {
        StdinConfig {
            max_line_bytes: default_max_line_bytes(),
        }
    }
}

pub async fn run(config: StdinConfig, ctx: SourceContext) -> std::io::Result<()> {
    let framer = LineFramer::new(config.max_line_bytes, CHUNK_BYTES);
    let frames = FramedRead::with_capacity(tokio::io::stdin(), framer, 2 * CHUNK_BYTES);
    pump(
        frames,
        Origin::new(&ctx.name),
        &ctx,
        config.max_line_bytes,
        |_, _, _| {},
    )
    .await
}
