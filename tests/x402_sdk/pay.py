"""Pay a Tollgate route with the official x402 Python SDK (a real third-party client).

Usage: python pay.py URL [exact|upto]
A fresh EVM key is generated; the SDK reads the 402's PAYMENT-REQUIRED, picks the offer of
the scheme asked (default `exact`; its default spend controls allow well-known assets only:
the test offer is Base Sepolia USDC), signs it (`exact`: the EIP-3009 authorization; `upto`:
the Permit2 permit for the offer's maximum, bound to `extra.facilitatorAddress`), retries
with PAYMENT-SIGNATURE, and this script prints one JSON line: the final status, the payer,
the decoded PAYMENT-RESPONSE and the body.
"""

import asyncio
import base64
import json
import sys

from eth_account import Account
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.exact.register import register_exact_evm_client
from x402.mechanisms.evm.upto import UptoEvmClientScheme


async def main(url: str, scheme: str) -> None:
    account = Account.create()
    client = x402Client()
    if scheme == "upto":
        client.register("eip155:*", UptoEvmClientScheme(EthAccountSigner(account)))
    else:
        register_exact_evm_client(client, EthAccountSigner(account))
    async with x402HttpxClient(client, timeout=20) as http:
        res = await http.get(url)
        header = res.headers.get("payment-response")
        decoded = json.loads(base64.b64decode(header)) if header else None
        print(
            json.dumps(
                {
                    "status": res.status_code,
                    "payer": account.address,
                    "payment_response": decoded,
                    "body": res.text,
                }
            )
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "exact"))
