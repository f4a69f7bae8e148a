#!/usr/bin/env python3
"""Measurement helpers for bench/run.sh (standard library only).

  measure.py snap OUT.json [--redis SOCK] NAME=PID ...
      CPU ticks (utime+stime of PID and its child processes), VmHWM and VmRSS (kB, summed over
      the same processes) of each named process, plus Redis `INFO commandstats` calls.
  measure.py diff SCENARIO BEFORE.json AFTER.json RESULTS.jsonl
      append {"measure": SCENARIO, "<name>_ticks", "<name>_hwm_kb", "<name>_rss_kb", "redis": {cmd: calls}}
  measure.py monitor FILE
      count the commands of a `redis-cli monitor` capture: top-level ones (one per round trip)
      and those run inside Lua scripts ("[0 lua]"); prints JSON.
  measure.py criterion CRITERION_DIR
      one JSON object {benchmark id: mean ns} from criterion's */new/estimates.json
"""
import json
import os
import subprocess
import sys


def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    # the command name may hold spaces: fields after the closing parenthesis
    rest = s[s.rindex(")") + 2:].split()
    ppid = int(rest[1])
    utime, stime = int(rest[11]), int(rest[12])
    return ppid, utime + stime


def _status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS"):
                out[k] = int(v.split()[0])
    return out


def _family(pid):
    """pid and its direct children (nginx workers)."""
    pids = [pid]
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != pid:
            try:
                if _stat(int(d))[0] == pid:
                    pids.append(int(d))
            except (OSError, ValueError):
                pass
    return pids


def redis_commandstats(sock):
    out = subprocess.run(["redis-cli", "-s", sock, "info", "commandstats"], capture_output=True,
                         text=True, check=True).stdout
    calls = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_"):].partition(":")
            for kv in fields.split(","):
                k, _, v = kv.partition("=")
                if k == "calls":
                    calls[name] = int(v)
    return calls


def snap(argv):
    out, rest = argv[0], argv[1:]
    snapd = {"procs": {}}
    i = 0
    while i < len(rest):
        a = rest[i]
        if a == "--redis":
            snapd["redis"] = redis_commandstats(rest[i + 1])
            i += 2
            continue
        name, _, pid = a.partition("=")
        ticks, hwm, rss = 0, 0, 0
        for p in _family(int(pid)):
            try:
                ticks += _stat(p)[1]
                st = _status(p)
                hwm += st.get("VmHWM", 0)
                rss += st.get("VmRSS", 0)
            except OSError:
                pass
        snapd["procs"][name] = {"ticks": ticks, "hwm_kb": hwm, "rss_kb": rss}
        i += 1
    with open(out, "w") as f:
        json.dump(snapd, f)


def diff(argv):
    scenario, before, after, results = argv
    with open(before) as f:
        b = json.load(f)
    with open(after) as f:
        a = json.load(f)
    line = {"measure": scenario, "clk_tck": os.sysconf("SC_CLK_TCK")}
    for name, pa in a["procs"].items():
        pb = b["procs"].get(name, {"ticks": 0})
        line[f"{name}_ticks"] = pa["ticks"] - pb["ticks"]
        line[f"{name}_hwm_kb"] = pa["hwm_kb"]
        line[f"{name}_rss_kb"] = pa["rss_kb"]
    if "redis" in a:
        rb = b.get("redis", {})
        # the `info` calls are our own snapshots
        line["redis"] = {k: v - rb.get(k, 0) for k, v in a["redis"].items()
                         if v - rb.get(k, 0) and k != "info"}
    with open(results, "a") as f:
        f.write(json.dumps(line) + "\n")


def monitor(argv):
    top, lua, cmds = 0, 0, {}
    with open(argv[0], errors="replace") as f:
        for line in f:
            # 1700000000.123456 [0 unix:/tmp/x.sock] "EVALSHA" "..."  /  [0 lua] "HGET" ...
            if "[" not in line or '"' not in line:
                continue
            src = line[line.index("[") + 1:line.index("]")]
            cmd = line.split('"')[1].lower()
            if src.endswith(" lua"):
                lua += 1
                cmds["lua:" + cmd] = cmds.get("lua:" + cmd, 0) + 1
            else:
                top += 1
                cmds[cmd] = cmds.get(cmd, 0) + 1
    print(json.dumps({"top_level": top, "in_scripts": lua, "commands": cmds}))


def criterion(argv):
    root = argv[0]
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        if os.path.basename(dirpath) == "new" and "estimates.json" in files and "benchmark.json" in files:
            with open(os.path.join(dirpath, "benchmark.json")) as f:
                bid = json.load(f)["full_id"]
            with open(os.path.join(dirpath, "estimates.json")) as f:
                out[bid] = json.load(f)["mean"]["point_estimate"]
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    fn = {"snap": snap, "diff": diff, "monitor": monitor, "criterion": criterion}.get(cmd)
    if fn is None:
        sys.exit(__doc__)
    fn(sys.argv[2:])
