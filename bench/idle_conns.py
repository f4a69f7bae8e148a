#!/usr/bin/env python3
"""Open N keep-alive connections to a server, send one request on each, keep them all open and
idle, then read the server's memory (VmRSS/VmHWM of PID and its child processes).

usage: idle_conns.py HOST PORT PATH PID [N=1000] [HOST_HEADER]
Prints one JSON line: {"connections", "answered", "rss_before_kb", "rss_kb", "hwm_kb"}.
"""
import json
import os
import socket
import sys
import time


def mem(pid):
    pids = [pid]
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != pid:
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
                if int(s[s.rindex(")") + 2:].split()[1]) == pid:
                    pids.append(int(d))
            except (OSError, ValueError):
                pass
    rss = hwm = 0
    for p in pids:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm += int(line.split()[1])
    return rss, hwm


def read_response(s):
    """Read one HTTP/1.1 response with Content-Length (enough for the bench upstream)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ", 2)[1])


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    host, port, path, pid = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
    host_header = sys.argv[6] if len(sys.argv) > 6 else f"{host}:{port}"
    rss_before, _ = mem(pid)
    req = f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: keep-alive\r\n\r\n".encode()
    socks, answered = [], 0
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=10)
        socks.append(s)
    for s in socks:  # all open first, then one request each
        s.sendall(req)
    for s in socks:
        if read_response(s) == 200:
            answered += 1
    time.sleep(1.0)  # idle
    rss, hwm = mem(pid)
    alive = 0
    for s in socks:  # still open after idling?
        s.setblocking(False)
        try:
            alive += 1 if s.recv(1) != b"" else 0
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    for s in socks:
        s.close()
    print(json.dumps({"connections": n, "answered": answered, "still_open": alive,
                      "rss_before_kb": rss_before, "rss_kb": rss, "hwm_kb": hwm}))


if __name__ == "__main__":
    main()
