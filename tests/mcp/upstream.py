"""A real MCP server for the MCP tests, written with the official SDK (FastMCP, Streamable
HTTP transport, answers as event streams): binds 127.0.0.1:0, prints its port as its first
line, serves at /mcp until killed.

Tools: `search` (what it saw of the payment: Tollgate-Payer, Tollgate-Charge, and whether any
payment credential reached it), `summarize` (reports `tokens` for metering), `fail` (raises:
an `isError` result), `echo` (free), `stats` (free: how often each tool ran).
"""

import collections
import socket
import sys
from typing import Any

import uvicorn
from mcp.server.fastmcp import Context, FastMCP

calls = collections.Counter()
mcp = FastMCP("tollgate-test-upstream", log_level="WARNING")
PAYMENT_KEYS = ("x402/payment", "org.paymentauth/credential")


def seen(ctx: Context) -> dict[str, Any]:
    req = ctx.request_context.request
    meta = ctx.request_context.meta
    keys = set(meta.model_dump(by_alias=True).keys()) if meta is not None else set()
    auth = req.headers.get("authorization", "")
    return {
        "payer": req.headers.get("tollgate-payer"),
        "charge": req.headers.get("tollgate-charge"),
        "paymentSeen": bool(keys & set(PAYMENT_KEYS))
        or auth.lower().startswith(("payment", "bearer tg1"))
        or "payment-signature" in req.headers,
    }


@mcp.tool()
def search(query: str, ctx: Context) -> dict[str, Any]:
    """Search (a paid tool)."""
    calls["search"] += 1
    return {"query": query, "results": [f"{query} {i}" for i in range(3)], **seen(ctx)}


@mcp.tool()
def summarize(text: str, ctx: Context) -> dict[str, Any]:
    """Summarize (metered by the tokens it reports)."""
    calls["summarize"] += 1
    return {"summary": text[:16], "tokens": len(text.split()), **seen(ctx)}


@mcp.tool()
def fail(reason: str) -> str:
    """Always fails (an isError result)."""
    calls["fail"] += 1
    raise ValueError(reason)


@mcp.tool()
def echo(text: str) -> str:
    """Free."""
    calls["echo"] += 1
    return text


@mcp.tool()
def stats() -> dict[str, Any]:
    """How often each tool ran (free)."""
    return dict(calls)


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(mcp.streamable_http_app(), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
