//! `awooop-market-mcp`: a market-intelligence MCP server over stdio (one JSON-RPC message per
//! line), the upstream of the EwoooC example (docs/ewoooc.md). It depends on nothing but
//! serde_json, reads no environment, opens no file or socket, and answers only from the data
//! compiled into it, so its answers are the same on every machine.

fn main() {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    awooop_market_mcp::serve(stdin.lock(), stdout.lock());
}
