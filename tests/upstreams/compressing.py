"""A stock-library upstream that compresses the way real servers do, for the metering tests.

Python's http.server with gzip/zlib from the standard library. It honours Accept-Encoding (gzip,
then deflate; identity otherwise) unless the query forces a coding (`?force=zstd` labels a body
with a coding the client never accepted, `?force=deflate-raw` sends raw deflate as some servers
do). Every answer echoes the Accept-Encoding it received in `x-seen-accept-encoding`.

  GET /json  -> application/json, usage.total_tokens = 400, one compressed body
  GET /sse   -> text/event-stream, 20 deltas then the usage event, each event compressed and
               flushed as it is sent (Z_SYNC_FLUSH), chunked; `?events=N&every_ms=M` sends N
               deltas M ms apart (a long stream)

Prints the port it listens on (127.0.0.1, a free port) on its first line.
"""
import json
import sys
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

USAGE = {"usage": {"total_tokens": 400}}


def compressor(coding):
    if coding == "gzip":
        return zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    if coding in ("deflate", "zstd"):  # 'zstd' is a lie told on purpose (a gzip stream)
        return zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS if coding == "deflate" else 16 + zlib.MAX_WBITS)
    if coding == "deflate-raw":
        return zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urlsplit(self.path)
        accept = self.headers.get("Accept-Encoding", "")
        codings = [c.split(";")[0].strip().lower() for c in accept.split(",") if c.strip()]
        force = parse_qs(url.query).get("force", [None])[0]
        coding = force or next((c for c in ("gzip", "deflate") if c in codings), None)
        label = {"deflate-raw": "deflate"}.get(coding, coding)
        if url.path == "/json":
            body = json.dumps({"id": "r1", "choices": [{"text": "hello"}], **USAGE}).encode()
            comp = compressor(coding)
            if comp:
                body = comp.compress(body) + comp.flush()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if label:
                self.send_header("Content-Encoding", label)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-seen-accept-encoding", accept)
            self.end_headers()
            self.wfile.write(body)
        elif url.path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            if label:
                self.send_header("Content-Encoding", label)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("x-seen-accept-encoding", accept)
            self.end_headers()
            comp = compressor(coding)
            query = parse_qs(url.query)
            n = int(query.get("events", ["20"])[0])
            every = int(query.get("every_ms", ["5"])[0]) / 1000
            events = [{"choices": [{"delta": {"content": "word "}}]}] * n + [USAGE]
            for ev in events:
                data = ("data: " + json.dumps(ev) + "\n\n").encode()
                if comp:
                    data = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
                self.chunk(data)
                time.sleep(every)
            tail = b"data: [DONE]\n\n"
            if comp:
                tail = comp.compress(tail) + comp.flush()
            self.chunk(tail)
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def chunk(self, data):
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)
