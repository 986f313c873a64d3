//! `awooop mcp-fixture` (feature `bench`): the MCP test server of `awooop_testkit::fixture`.

use super::*;

/// `awooop mcp-fixture`: the upstream client's test server (stdio, or HTTP until SIGTERM).
#[cfg(feature = "bench")]
pub(super) async fn mcp_fixture(a: McpFixtureArgs) -> anyhow::Result<()> {
    use awooop_testkit::fixture;
    if a.stdio {
        fixture::serve_stdio().await?;
        return Ok(());
    }
    let server = fixture::FixtureServer::bind(
        a.listen,
        fixture::FixtureOptions {
            sse: a.sse,
            ..Default::default()
        },
    )
    .await?;
    println!("PORT={}", server.addr.port());
    shutdown_signal().await;
    drop(server);
    Ok(())
}
