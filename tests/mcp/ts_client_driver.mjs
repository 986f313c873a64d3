// MCP client driver built on the official TypeScript SDK (@modelcontextprotocol/sdk).
// Same contract as client_driver.py:
//   node ts_client_driver.mjs URL [--token T] [--tool NAME] [--args JSON]
// prints {"protocol_version", "tools": [...], "result": {...} | null, "error": {...} | null};
// exit 1 (message on stderr) when the connection fails.
// The SDK is resolved from AWOOOP_TEST_NODE_MODULES (scripts/test.sh installs it into
// .tools/node/node_modules).
import { createRequire } from "node:module";
import path from "node:path";

const modules = process.env.AWOOOP_TEST_NODE_MODULES;
if (!modules) {
  console.error("ts_client_driver: AWOOOP_TEST_NODE_MODULES is not set");
  process.exit(1);
}
const require = createRequire(path.join(modules, "noop.js"));
const { Client } = await import(require.resolve("@modelcontextprotocol/sdk/client/index.js"));
const { StreamableHTTPClientTransport } = await import(
  require.resolve("@modelcontextprotocol/sdk/client/streamableHttp.js")
);

const argv = process.argv.slice(2);
const url = argv[0];
const opt = (name) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const token = opt("--token");
const tool = opt("--tool");
const args = JSON.parse(opt("--args") ?? "{}");

try {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
  const client = new Client({ name: "awooop-ts-driver", version: "1.0.0" });
  await client.connect(transport);
  const out = {
    protocol_version: transport.protocolVersion ?? null,
    tools: (await client.listTools()).tools.map((t) => t.name),
    result: null,
    error: null,
  };
  if (tool) {
    try {
      out.result = await client.callTool({ name: tool, arguments: args });
    } catch (e) {
      if (typeof e?.code === "number") {
        out.error = { code: e.code, message: String(e.message) };
      } else {
        throw e;
      }
    }
  }
  await transport.terminateSession().catch(() => {});
  await client.close();
  console.log(JSON.stringify(out));
} catch (e) {
  console.error(`ts_client_driver: ${e?.name}: ${e?.message}`);
  process.exit(1);
}
