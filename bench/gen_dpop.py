#!/usr/bin/env python3
"""DPoP proofs (RFC 9449, EdDSA) for the bench's `6c_token_dpop` scenario.

usage: gen_dpop.py KEY_FILE key                      make a key (Ed25519, raw 32 bytes, base64url)
       gen_dpop.py KEY_FILE one METHOD URL           one proof (no ath): the top-up's
       gen_dpop.py KEY_FILE many OUT COUNT TOKEN URL COUNT GET proofs with ath, unique jti, one per line

Every proof is made now (iat), so the scenario must run within the gateway's
dpop_max_age_secs (60 by default) of the generation.
"""
import base64
import hashlib
import json
import os
import sys
import time
from multiprocessing import Pool

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def load(path):
    raw = base64.urlsafe_b64decode(open(path).read().strip() + "==")
    return Ed25519PrivateKey.from_private_bytes(raw)


def proof(key, method, url, token, iat, jti):
    x = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    header = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64(x)}}
    claims = {"jti": jti, "htm": method, "htu": url, "iat": iat}
    if token:
        claims["ath"] = b64(hashlib.sha256(token.encode()).digest())
    signed = b64(json.dumps(header, separators=(",", ":")).encode()) + "." + b64(
        json.dumps(claims, separators=(",", ":")).encode())
    return signed + "." + b64(key.sign(signed.encode()))


_job = None


def _init(job):
    global _job
    _job = job


def _make(rng):
    path, token, url, iat, prefix = _job
    key = load(path)
    return [proof(key, "GET", url, token, iat, f"{prefix}-{n}") for n in range(*rng)]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, cmd = sys.argv[1:3]
    if cmd == "key":
        k = Ed25519PrivateKey.generate()
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat
        open(path, "w").write(b64(k.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())))
    elif cmd == "one":
        method, url = sys.argv[3:5]
        print(proof(load(path), method, url, None, int(time.time()), b64(os.urandom(12))))
    elif cmd == "many":
        out, count, token, url = sys.argv[3:7]
        count = int(count)
        job = (path, token, url, int(time.time()), b64(os.urandom(6)))
        ranges = [(i, min(i + 5000, count)) for i in range(0, count, 5000)]
        t0 = time.time()
        with Pool(os.cpu_count() or 1, _init, (job,)) as pool, open(out, "w") as f:
            for part in pool.imap(_make, ranges):
                f.write("\n".join(part) + "\n")
        print(f"generated {count} DPoP proofs in {time.time() - t0:.1f}s -> {out}", file=sys.stderr)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
