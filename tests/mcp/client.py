"""The official MCP Python SDK's client paying for tools through Tollgate (tests/tests/mcp.rs).

Usage: client.py '<json>' with {"gateway", "tools" (the MCP route's path), "agent" (the agent
MCP server's path), "receipts" (payment receipts for the `search` tool), "topup" (a top-up
receipt)}. Every step's outcome is printed as one JSON object at the end; the Rust test checks
the amounts against the ledger.
"""

import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError


def dump(result):
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


async def call(session, name, args, meta=None):
    """A tool call's result, or its JSON-RPC error."""
    try:
        return {"result": dump(await session.call_tool(name, args, meta=meta))}
    except McpError as e:
        return {"error": {"code": e.error.code, "message": e.error.message, "data": e.error.data}}


async def session_steps(url, headers, steps):
    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            return await steps(session)


async def main(cfg):
    out = {}
    tools_url = cfg["gateway"] + cfg["tools"]
    agent_url = cfg["gateway"] + cfg["agent"]
    receipts = cfg["receipts"]

    async def unpaid_then_receipts(s):
        listed = await s.list_tools()
        out["tools"] = {t.name: (t.meta or {}).get("tollgate/price") for t in listed.tools}
        unpaid = await call(s, "search", {"query": "unpaid"})
        out["unpaid"] = unpaid
        data = unpaid["error"]["data"]
        challenge, accepted = data["challenges"][0], data["accepts"][0]
        credential = {"challenge": challenge, "payload": {"receipt": receipts[0]}}
        out["paid_scheme"] = await call(
            s, "search", {"query": "scheme"}, meta={"org.paymentauth/credential": credential}
        )
        out["replayed"] = await call(
            s, "search", {"query": "again"}, meta={"org.paymentauth/credential": credential}
        )
        x402 = {"x402Version": 2, "accepted": accepted, "payload": {"receipt": receipts[1]}}
        out["paid_x402"] = await call(s, "search", {"query": "x402"}, meta={"x402/payment": x402})
        out["failed"] = await call(
            s, "fail", {"reason": "boom"}, meta={"org.paymentauth/credential": receipts[2]}
        )
        out["free"] = await call(s, "echo", {"text": "hi"})

    await session_steps(tools_url, None, unpaid_then_receipts)

    async def agent_topup(s):
        listed = await s.list_tools()
        out["agent_tools"] = sorted(t.name for t in listed.tools)
        out["topup"] = await call(s, "topup", {"receipt": cfg["topup"]})
        out["quote"] = await call(s, "quote", {"path": cfg["tools"], "tool": "search"})
        out["no_token_balance"] = await call(s, "balance", {})
        catalog = await s.read_resource("tollgate://catalog")
        out["catalog"] = json.loads(catalog.contents[0].text)

    await session_steps(agent_url, None, agent_topup)
    token = out["topup"]["result"]["structuredContent"]["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}

    async def with_token(s):
        out["paid_token"] = await call(s, "search", {"query": "token"})
        out["metered"] = await call(s, "summarize", {"text": "one two three four five"})
        out["stats"] = await call(s, "stats", {})

    await session_steps(tools_url, bearer, with_token)

    async def agent_bill(s):
        out["balance"] = await call(s, "balance", {})
        out["usage"] = await call(s, "usage", {"limit": 10})

    await session_steps(agent_url, bearer, agent_bill)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
