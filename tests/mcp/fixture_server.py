"""MCP fixture server written with the official Python SDK (`mcp` 2.x, MCPServer).

The interop peer for AwoooP's upstream client and the gateway's credential-leak tests.
Transports:
    python fixture_server.py stdio
    python fixture_server.py http [--json]   # Streamable HTTP on 127.0.0.1, a free port;
                                             # prints `PORT=<n>` on stdout once listening
Tools (the same contract as the Rust fixture, operator/src/gateway/upstream/fixture.rs):
    echo(text)            -> text content `text`, structuredContent {"text": text}
    secret(name)          -> the raw value of request header `name` (HTTP) or env var `name` (stdio)
    leak_text(name)       -> the secret inside a sentence
    leak_structured(name) -> structuredContent {"token": secret}
    leak_nested(name)     -> structuredContent {"outer": {"list": [{"deep": secret}]}}
    leak_error(name)      -> a JSON-RPC error whose message contains the secret
    leak_is_error(name)   -> an isError result whose text contains the secret
    leak_base64(name)     -> base64 of the secret
    leak_urlencoded(name) -> a URL whose query carries the URL-encoded secret
    blob(size)            -> a text content of `size` bytes
    fail(mode)            -> mode "rpc": JSON-RPC error -32001; otherwise an isError result
    sleep(ms)             -> waits, then "slept"
    pid()                 -> {"pid": <process id>}
    headers()             -> the request headers as a JSON object (HTTP only)
    env()                 -> {"names": [sorted names of the process's environment variables]}
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
import urllib.parse
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.server.transport_security import TransportSecuritySettings

server = MCPServer("awooop-python-fixture")
MODE = "stdio"


def _secret(name: str, ctx: Context) -> str:
    if MODE == "stdio":
        return os.environ.get(name, "")
    request = ctx.request_context.request
    if request is None:
        return ""
    return request.headers.get(name, "")


@server.tool()
def echo(text: str) -> dict[str, Any]:
    return {"text": text}


@server.tool()
def secret(name: str, ctx: Context) -> str:
    return _secret(name, ctx)


@server.tool()
def leak_text(name: str, ctx: Context) -> str:
    return f"the secret is {_secret(name, ctx)} (oops)"


@server.tool()
def leak_structured(name: str, ctx: Context) -> dict[str, Any]:
    return {"token": _secret(name, ctx)}


@server.tool()
def leak_nested(name: str, ctx: Context) -> dict[str, Any]:
    return {"outer": {"list": [{"deep": _secret(name, ctx)}]}}


@server.tool()
def leak_error(name: str, ctx: Context) -> str:
    raise MCPError(-32001, f"upstream failed with credential {_secret(name, ctx)}")


@server.tool()
def leak_is_error(name: str, ctx: Context) -> str:
    raise ToolError(f"tool failed with credential {_secret(name, ctx)}")


@server.tool()
def leak_base64(name: str, ctx: Context) -> str:
    return base64.b64encode(_secret(name, ctx).encode()).decode()


@server.tool()
def leak_urlencoded(name: str, ctx: Context) -> str:
    return "https://example.invalid/cb?token=" + urllib.parse.quote(_secret(name, ctx), safe="")


@server.tool()
def blob(size: int) -> str:
    return "x" * size


@server.tool()
def fail(mode: str) -> str:
    if mode == "rpc":
        raise MCPError(-32001, "fixture failure")
    raise ToolError("fixture tool failure")


@server.tool()
async def sleep(ms: int) -> str:
    await asyncio.sleep(ms / 1000)
    return "slept"


@server.tool()
def pid() -> dict[str, Any]:
    return {"pid": os.getpid()}


@server.tool()
def headers(ctx: Context) -> dict[str, Any]:
    request = ctx.request_context.request
    if request is None:
        return {}
    return {k.lower(): v for k, v in request.headers.items()}


@server.tool()
def env() -> dict[str, Any]:
    return {"names": sorted(os.environ.keys())}


async def _serve_http(json_response: bool) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = server.streamable_http_app(
        json_response=json_response,
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[f"127.0.0.1:{port}", "127.0.0.1"],
            allowed_origins=[],
        ),
    )
    config = uvicorn.Config(app, log_level="warning")
    srv = uvicorn.Server(config)

    async def announce() -> None:
        while not srv.started:
            await asyncio.sleep(0.01)
        print(f"PORT={port}", flush=True)

    await asyncio.gather(srv.serve(sockets=[sock]), announce())


def main() -> None:
    global MODE
    args = sys.argv[1:]
    MODE = args[0] if args else "stdio"
    if MODE == "stdio":
        server.run("stdio")
    elif MODE == "http":
        asyncio.run(_serve_http("--json" in args))
    else:
        print(json.dumps({"error": f"unknown mode {MODE}"}), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
