"""A path-decoding upstream for tests/tests/paths.rs: Starlette behind uvicorn.

uvicorn decodes the path (scope["path"]); this app serves by something worse, as lenient
as the worst upstreams the audit found: the raw path decoded twice, cut at NUL, `?` and `#`,
`\\` read as `/`, Tomcat-style `;` parameters dropped, overlong UTF-8 read as ASCII, `//`
merged, `.` and `..` resolved. Then it serves by the result: `/v1/compute...` answers
"PRICED COMPUTE", `/v1/cheap...` "cheap", anything else "free". Every answer echoes what the
app received.

Run: python starlette_app.py  (prints the port it listens on, then serves on 127.0.0.1)
"""

import json
import socket
import sys
from urllib.parse import unquote_to_bytes

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def overlong(b: bytes) -> bytes:
    """Read two-byte overlong UTF-8 (0xC0/0xC1 xx) as the ASCII byte it spells."""
    out = bytearray()
    i = 0
    while i < len(b):
        if b[i] in (0xC0, 0xC1) and i + 1 < len(b):
            out.append(((b[i] & 0x1F) << 6) | (b[i + 1] & 0x3F))
            i += 2
        else:
            out.append(b[i])
            i += 1
    return bytes(out)


def lenient(raw_path: bytes) -> str:
    # Decoded twice, from the raw bytes (uvicorn's own decoding replaces invalid UTF-8).
    b = unquote_to_bytes(unquote_to_bytes(raw_path))
    b = overlong(b)
    for cut in (b"\x00", b"?", b"#"):
        b = b.split(cut, 1)[0]
    b = b.replace(b"\\", b"/")
    b = b"/".join(seg.split(b";", 1)[0] for seg in b.split(b"/"))
    segments = []
    for seg in b.split(b"/"):
        if seg in (b"", b"."):
            continue
        if seg == b"..":
            if segments:
                segments.pop()
            continue
        segments.append(seg)
    return "/" + "/".join(s.decode("utf-8", "replace") for s in segments)


async def serve(request: Request) -> Response:
    normalized = lenient(request.scope["raw_path"])
    if normalized == "/v1/compute" or normalized.startswith("/v1/compute/"):
        resource = "PRICED COMPUTE"
    elif normalized == "/v1/cheap" or normalized.startswith("/v1/cheap/"):
        resource = "cheap"
    else:
        resource = "free"
    body = {
        "raw_path": request.scope["raw_path"].decode("latin-1"),
        "path": request.scope["path"],
        "normalized": normalized,
        "resource": resource,
    }
    return Response(json.dumps(body), media_type="application/json")


app = Starlette(routes=[Route("/{path:path}", serve), Route("/", serve)])

if __name__ == "__main__":
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    # Listening before the port is printed: connections wait in the backlog until uvicorn is up.
    sock.listen(128)
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
    sys.exit(0)
