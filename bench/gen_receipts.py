#!/usr/bin/env python3
"""Pre-generate single-use Tollgate payment receipts (EdDSA JWTs), one per line.

usage: gen_receipts.py KEYGEN_JSON OUT_FILE COUNT ISS AUD JTI_PREFIX [AMOUNT] [CURRENCY] [KIND]

KIND is the receipt `kind` claim: payment (default) or topup (for POST /tollgate/v1/topup).

KEYGEN_JSON is the output of `tollgate keygen --kid K --json` (private_jwk "d" and "kid" are used).
The private_pem is not used: it is PKCS#8 v2 (with the public key), which OpenSSL 3.0 and
pyca/cryptography (as installed here) refuse to load ("ASN.1 parsing error: extra data").
Every receipt has a unique jti (JTI_PREFIX-<n>), so none is ever replayed.
"""
import json
import os
import sys
import time
from multiprocessing import Pool

import jwt
import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_key = None
_kid = None
_args = None


def _init(d, kid, args):
    global _key, _kid, _args
    _key = Ed25519PrivateKey.from_private_bytes(base64.urlsafe_b64decode(d + "=" * (-len(d) % 4)))
    _kid = kid
    _args = args


def _sign(rng):
    iss, aud, prefix, amount, currency, kind, iat = _args
    out = []
    for n in range(*rng):
        claims = {
            "iss": iss,
            "sub": f"bench-payer-{n % 64}",
            "aud": aud,
            "jti": f"{prefix}-{n}",
            "iat": iat,
            "exp": iat + 3000,
            "amount": amount,
            "currency": currency,
            "kind": kind,
        }
        out.append(jwt.encode(claims, _key, algorithm="EdDSA", headers={"kid": _kid}))
    return out


def main():
    if len(sys.argv) < 7:
        sys.exit(__doc__)
    keyfile, outfile, count, iss, aud, prefix = sys.argv[1:7]
    amount = sys.argv[7] if len(sys.argv) > 7 else "0.01"
    currency = sys.argv[8] if len(sys.argv) > 8 else "USD"
    kind = sys.argv[9] if len(sys.argv) > 9 else "payment"
    count = int(count)
    with open(keyfile) as f:
        k = json.load(f)
    kid = k["private_jwk"].get("kid", "k1")
    iat = int(time.time()) - 5
    chunk = 5000
    ranges = [(i, min(i + chunk, count)) for i in range(0, count, chunk)]
    t0 = time.time()
    with Pool(os.cpu_count() or 1, _init, (k["private_jwk"]["d"], kid, (iss, aud, prefix, amount, currency, kind, iat))) as pool, \
            open(outfile, "w") as out:
        for part in pool.imap(_sign, ranges):
            out.write("\n".join(part))
            out.write("\n")
    print(f"generated {count} receipts in {time.time() - t0:.1f}s -> {outfile}", file=sys.stderr)


if __name__ == "__main__":
    main()
