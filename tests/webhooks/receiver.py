"""A webhook receiver for the tests (tests/tests/webhooks.rs): it verifies every delivery with
the Standard Webhooks reference library and answers by a plan, one action per attempt in
arrival order ("500": HTTP 500; "hang": answer only after 3 s, past the sender's timeout, as a
slow receiver that did process it; "ok": 204); after the plan, every attempt gets 204.

    python receiver.py SECRET PORT PLAN      (PLAN: comma-separated actions, or "")

GET /received answers every attempt: {"attempts": [{"id", "type", "valid", "action",
"payload"}]}. The port is printed first (0: any free port)."""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

SECRET, PORT, PLAN = sys.argv[1], int(sys.argv[2]), [a for a in sys.argv[3].split(",") if a]
HOOK = Webhook(SECRET)
LOCK = threading.Lock()
ATTEMPTS = []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            payload = HOOK.verify(body, headers)
            valid = True
        except Exception as e:  # noqa: BLE001 -- any refusal is an invalid delivery
            payload, valid = {"error": str(e)}, False
        with LOCK:
            n = len(ATTEMPTS)
            action = PLAN[n] if n < len(PLAN) else "ok"
            ATTEMPTS.append({
                "id": headers.get("webhook-id"),
                "type": (payload or {}).get("type"),
                "valid": valid,
                "action": action,
                "payload": payload,
            })
        if action == "500":
            self.send_response(500)
            self.end_headers()
            return
        if action == "hang":
            time.sleep(3)
        self.send_response(204)
        self.end_headers()

    def do_GET(self):
        with LOCK:
            data = json.dumps({"attempts": ATTEMPTS}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
