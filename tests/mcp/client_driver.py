"""MCP client driver built on the official Python SDK (`mcp` 2.x `Client`).

Connects to a Streamable HTTP MCP endpoint (optionally with a bearer token), lists the tools,
optionally calls one, and prints one JSON object on stdout:

    {"protocol_version": "...", "tools": ["name", ...],
     "result": {...CallToolResult as JSON...} | null,
     "error": {"code": n, "message": "..."} | null}

Usage:
    python client_driver.py URL [--token TOKEN] [--header NAME=VALUE ...]
                                [--tool NAME] [--args JSON] [--mode auto|legacy]

Exit code 0 when the connection worked (a JSON-RPC error from the call is reported in
"error", not as a failure), 1 when it did not (message on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


async def run(args: argparse.Namespace) -> dict:
    headers = {}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    for h in args.header:
        name, _, value = h.partition("=")
        headers[name] = value
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=60.0)) as http:
        transport = streamable_http_client(args.url, http_client=http)
        async with Client(transport, mode=args.mode) as client:
            out: dict = {
                "protocol_version": client.session.protocol_version,
                "tools": [],
                "result": None,
                "error": None,
            }
            listed = await client.list_tools()
            out["tools"] = [t.name for t in listed.tools]
            if args.tool:
                try:
                    result = await client.call_tool(args.tool, json.loads(args.args))
                    out["result"] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
                except MCPError as e:
                    out["error"] = {"code": e.code, "message": e.message}
            return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--token")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--tool")
    p.add_argument("--args", default="{}")
    # "auto" (the SDK default) probes server/discover first and falls back to initialize.
    p.add_argument("--mode", default="auto", choices=["auto", "legacy"])
    args = p.parse_args()
    try:
        out = asyncio.run(run(args))
    except Exception as e:  # noqa: BLE001 - report any connection failure as exit 1
        print(f"client_driver: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
