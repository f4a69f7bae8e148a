#!/usr/bin/env python3
"""Turn bench/run.sh's results.jsonl into a Markdown table + targets (stdout) and an SVG chart.

usage: report.py RESULTS.jsonl OUT_DIR      (writes OUT_DIR/chart.svg; standard library only)
"""
import json
import sys
from html import escape

LABELS = {
    "1_direct_upstream": "1 direct upstream",
    "2_nginx_proxy": "2 nginx proxy_pass",
    "3_gateway_free": "3 gateway free route",
    "4_unpaid_402": "4 unpaid priced (402)",
    "5_paid_receipt": "5 paid, fresh receipt",
    "5b_paid_receipt_admission": "5b paid receipt, at admission",
    "6_token_drawdown": "6 access-token drawdown",
    "6b_token_drawdown_admission": "6b token drawdown, at admission",
    "6c_token_dpop": "6c token drawdown, DPoP-bound (Ed25519 proof)",
    "7_metered_json": "7 metered (JSON usage)",
    "8_sqlite_receipt_full": "8 sqlite (full sync): fresh receipt",
    "8_sqlite_token_full": "8 sqlite (full sync): token drawdown",
    "8_sqlite_receipt_normal": "8 sqlite (normal sync): fresh receipt",
    "8_sqlite_token_normal": "8 sqlite (normal sync): token drawdown",
    "9_lease_token_drawdown": "9 token drawdown, balance lease",
    "9_lease_metered_json": "9 metered (JSON usage), balance lease",
    "10_ledger_token_drawdown": "10 token drawdown, PostgreSQL ledger",
    "10_ledger_metered_json": "10 metered (JSON usage), PostgreSQL ledger",
}
VERIFY_ID = "receipt_verify/ed25519/ReceiptVerifier::verify"


def load(path):
    runs, measures, samples, idle, crit, meta = {}, {}, {}, {}, {}, {}
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            if "scenario" in d:
                runs[d["scenario"]] = d
            elif "measure" in d:
                measures[d["measure"]] = d
            elif "rt_sample" in d:
                samples[d["rt_sample"]] = d
            elif "idle_conns" in d:
                idle[d["idle_conns"]] = d["result"]
            elif "criterion" in d:
                crit = d["criterion"]
            elif "meta" in d:
                meta = d["meta"]
    return runs, measures, samples, idle, crit, meta


def main():
    runs, measures, samples, idle, crit, meta = load(sys.argv[1])
    out_dir = sys.argv[2]
    nproc = meta.get("nproc", 2)
    rows = []
    for s in LABELS:
        if s not in runs:
            continue
        r, m = runs[s], measures.get(s, {})
        req = max(r["requests"], 1)
        tck = m.get("clk_tck", 100)
        us = lambda ticks: ticks * 1e6 / tck / req  # noqa: E731
        redis = m.get("redis", {})
        row = {
            "s": s, "rps": r["rps"], "p50": r["p50_us"] / 1000, "p99": r["p99_us"] / 1000,
            "non2xx": r["non2xx"], "statuses": r["statuses"], "requests": r["requests"],
            "sockerr": {k: v for k, v in r["socket_errors"].items() if v and k != "status"},
            "missing_pr": r.get("missing_payment_response", 0), "exhausted": r.get("exhausted", 0),
            "proxy_cpu": us(m.get("proxy_ticks", 0)) if m else None,
            "up_cpu": us(m.get("upstream_ticks", 0)) if m else None,
            "redis_cpu": us(m.get("redis_ticks", 0)) if "redis_ticks" in m else None,
            "proxy_hwm": m.get("proxy_hwm_kb", 0) / 1024 if m else None,
            "redis_calls": sum(redis.values()) / req if "redis" in m else None,
            "evalsha": redis.get("evalsha", 0) / req if "redis" in m else None,
            "redis_breakdown": {k: round(v / req, 3) for k, v in sorted(redis.items())},
            "idle": r.get("idle_before"),
        }
        smp = samples.get(s)
        if smp:
            n = smp["requests"]
            row["rtt"] = smp["monitor"]["top_level"] / n
            row["in_scripts"] = smp["monitor"]["in_scripts"] / n
            row["sample_cmds"] = {k: round(v / n, 2) for k, v in sorted(smp["monitor"]["commands"].items())}
            row["sample_statuses"] = smp["statuses"]
        rows.append(row)
    by = {r["s"]: r for r in rows}
    ngx, free = by.get("2_nginx_proxy"), by.get("3_gateway_free")

    f2 = lambda x, d=2: "-" if x is None else f"{x:.{d}f}"  # noqa: E731
    print(f"Run: {meta.get('date', '?')}, commit {meta.get('commit', '?')[:12]}, {nproc} CPUs "
          f"({meta.get('cpu', '?')}), wrk {meta.get('wrk', '?')}, gateway RUST_LOG={meta.get('rust_log', '?')}, "
          f"{meta.get('seconds', '?')} s in all\n")
    print("| scenario | req/s | p50 ms | p99 ms | non-2xx | vs nginx (2) | vs free (3) | proxy CPU us/req | "
          "upstream CPU us/req | redis CPU us/req | proxy peak RSS MB | redis cmds/req (EVALSHA) | "
          "redis round trips/req | idle before |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        vn = f"{r['rps'] / ngx['rps']:.2f}" if ngx else "-"
        vf = f"{r['rps'] / free['rps']:.2f}" if free else "-"
        rc = "-" if r["redis_calls"] is None else f"{r['redis_calls']:.2f} ({r['evalsha']:.2f})"
        rtt = f"{r['rtt']:.2f}" if "rtt" in r else "-"
        print(f"| {LABELS[r['s']]} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['non2xx']:,} | {vn} | {vf} | "
              f"{f2(r['proxy_cpu'], 1)} | {f2(r['up_cpu'], 1)} | {f2(r['redis_cpu'], 1)} | {f2(r['proxy_hwm'], 1)} | "
              f"{rc} | {rtt} | {r['idle']}% |")
    print("\n(proxy = the upstream itself in 1, nginx master + workers in 2, the gateway in 3-7; "
          "CPU = utime+stime over the wrk run / requests; redis cmds/req = INFO commandstats calls, "
          "which count the commands run inside scripts too; round trips/req = top-level commands "
          "seen by MONITOR over 50 sequential requests)\n")
    for r in rows:
        notes = []
        st = " ".join(f"{k}:{v}" for k, v in sorted(r["statuses"].items()))
        notes.append(f"statuses {st}")
        if r["sockerr"]:
            notes.append(f"socket errors {r['sockerr']}")
        if r["missing_pr"]:
            notes.append(f"2xx without PAYMENT-RESPONSE: {r['missing_pr']}")
        if r["exhausted"]:
            notes.append(f"RECEIPTS EXHAUSTED: {r['exhausted']}")
        if r["redis_breakdown"]:
            notes.append("commandstats/req " + ", ".join(f"{k} {v}" for k, v in r["redis_breakdown"].items()))
        if "sample_cmds" in r:
            notes.append("MONITOR/req " + (", ".join(f"{k} {v}" for k, v in r["sample_cmds"].items()) or "none")
                         + f" (sample statuses {r['sample_statuses']})")
        print(f"- {LABELS[r['s']]}: " + "; ".join(notes))

    # micro-benchmarks
    if crit:
        print("\nCriterion (mean per call, one core):\n")
        print("| benchmark | mean | per second |")
        print("|---|---:|---:|")
        for k, ns in sorted(crit.items()):
            t = f"{ns / 1000:.2f} us" if ns >= 1000 else f"{ns:.0f} ns"
            print(f"| {k} | {t} | {1e9 / ns:,.0f} |")

    # targets
    print("\nTargets:\n")
    res = []

    def target(name, ok, detail):
        res.append((name, ok))
        print(f"- [{'met' if ok else 'MISSED' if ok is not None else 'n/a'}] {name}: {detail}")

    if ngx and free:
        target("free route >= 0.9x nginx throughput", free["rps"] >= 0.9 * ngx["rps"],
               f"{free['rps']:,.0f} / {ngx['rps']:,.0f} = {free['rps'] / ngx['rps']:.2f}x")
        target("free route p99 within 1 ms of nginx", free["p99"] - ngx["p99"] <= 1.0,
               f"{free['p99']:.2f} ms vs {ngx['p99']:.2f} ms ({free['p99'] - ngx['p99']:+.2f} ms)")
    if free and "4_unpaid_402" in by:
        x = by["4_unpaid_402"]
        target("402 path >= 1.0x free route", x["rps"] >= free["rps"],
               f"{x['rps']:,.0f} / {free['rps']:,.0f} = {x['rps'] / free['rps']:.2f}x"
               f" (Redis commands/req {f2(x['redis_calls'])})")
    ceiling = None
    if VERIFY_ID in crit:
        ceiling = 1e9 / crit[VERIFY_ID] * nproc
    for s in ("5_paid_receipt", "5b_paid_receipt_admission"):
        if not (free and s in by):
            continue
        p = by[s]
        if ceiling:
            base = min(ceiling, free["rps"])
            which = "ceiling" if ceiling <= free["rps"] else "free route"
            target(f"paid receipt >= 0.8x min(verification ceiling, free route) ({LABELS[s]})", p["rps"] >= 0.8 * base,
                   f"{p['rps']:,.0f} req/s; verification ceiling = {1e9 / crit[VERIFY_ID]:,.0f}/s/core x {nproc} "
                   f"worker threads = {ceiling:,.0f}/s; ratio to ceiling {p['rps'] / ceiling:.2f}x, to free route "
                   f"{p['rps'] / free['rps']:.2f}x (the bar is the {which}: need >= {0.8 * base:,.0f})")
        else:
            target("paid receipt >= 0.8x min(ceiling, free)", None, "no criterion result")
    for s in ("6_token_drawdown", "6b_token_drawdown_admission", "7_metered_json",
              "9_lease_token_drawdown", "9_lease_metered_json", "10_ledger_token_drawdown",
              "10_ledger_metered_json"):
        if not (free and s in by):
            continue
        t = by[s]
        target(f"token drawdown >= 0.8x free route ({LABELS[s]})", t["rps"] >= 0.8 * free["rps"],
               f"{t['rps']:,.0f} / {free['rps']:,.0f} = {t['rps'] / free['rps']:.2f}x")
    for s in ("5_paid_receipt", "6_token_drawdown", "7_metered_json", "9_lease_token_drawdown",
              "9_lease_metered_json", "10_ledger_token_drawdown", "10_ledger_metered_json"):
        if s in by and by[s].get("redis_calls") is not None:
            c = by[s]["redis_calls"]
            target(f"Redis commands per paid request <= 8 ({LABELS[s]})", c <= 8, f"{c:.2f} (INFO commandstats)")
    for s, limit in (("5_paid_receipt", 1), ("5b_paid_receipt_admission", 1), ("6_token_drawdown", 1),
                     ("6b_token_drawdown_admission", 1), ("7_metered_json", 2),
                     ("9_lease_token_drawdown", 1), ("9_lease_metered_json", 1),
                     ("10_ledger_token_drawdown", 1)):
        if s in by and "rtt" in by[s]:
            r = by[s]
            target(f"Redis round trips per request <= {limit} ({LABELS[s]}, "
                   f"{'fixed price' if limit == 1 else 'metered'})", r["rtt"] <= limit + 1e-9,
                   f"{r['rtt']:.2f} (MONITOR sample; {r['in_scripts']:.1f} commands inside scripts; "
                   f"commandstats {f2(r['redis_calls'])} calls/req of which EVALSHA {f2(r['evalsha'])})")
    if "6_token_drawdown" in by and "6c_token_dpop" in by:
        a, b = by["6_token_drawdown"], by["6c_token_dpop"]
        print(f"\nDPoP: {b['rps']:,.0f} req/s vs {a['rps']:,.0f} bearer ({b['rps'] / a['rps']:.2f}x); "
              f"gateway CPU {f2(b['proxy_cpu'], 1)} vs {f2(a['proxy_cpu'], 1)} us/req, Redis commands {f2(b['redis_calls'], 1)} vs {f2(a['redis_calls'], 1)}")
    if "gateway" in idle:
        g = idle["gateway"]
        extra = ""
        if "nginx" in idle:
            n = idle["nginx"]
            extra = f"; nginx (master + workers) {n['rss_kb'] / 1024:.1f} MB with the same connections"
        target(f"RSS <= 32 MB with {g['connections']} open connections", g["rss_kb"] <= 32 * 1024,
               f"gateway VmRSS {g['rss_kb'] / 1024:.1f} MB (before {g['rss_before_kb'] / 1024:.1f} MB, "
               f"peak {g['hwm_kb'] / 1024:.1f} MB, {g['answered']} answered, {g['still_open']} still open){extra}")
    print(f"\n{sum(1 for _, ok in res if ok)} of {len(res)} targets met")

    write_svg(rows, ngx, free, ceiling, idle, meta, f"{out_dir}/chart.svg")


def write_svg(rows, ngx, free, ceiling, idle, meta, path):
    W, left, right = 980, 230, 40
    bar_h, gap = 22, 8
    panel_w = (W - left - right - 40) // 2
    top = 70
    H = top + len(rows) * (bar_h + gap) + 120
    max_rps = max([r["rps"] for r in rows] + ([ceiling] if ceiling else [])) * 1.4
    cpu_vals = [r["proxy_cpu"] or 0 for r in rows]
    max_cpu = max(cpu_vals + [1]) * 1.15
    colors = {"1": "#9aa5b1", "2": "#4e79a7", "3": "#59a14f", "4": "#8cd17d", "5": "#e15759",
              "6": "#f28e2b", "7": "#b07aa1"}
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="16" font-weight="bold">'
         f'Tollgate benchmark ({escape(meta.get("date", ""))}, {meta.get("nproc", "?")} CPUs, wrk {escape(meta.get("wrk", ""))})</text>',
         f'<text x="{left}" y="{top - 12}" font-weight="bold">requests/s (label: p99 latency)</text>',
         f'<text x="{left + panel_w + 40}" y="{top - 12}" font-weight="bold">proxy CPU per request (us)</text>']
    x2 = left + panel_w + 40
    for i, r in enumerate(rows):
        y = top + i * (bar_h + gap)
        c = colors.get(r["s"][0], "#888")
        o.append(f'<text x="{left - 8}" y="{y + bar_h * 0.7}" text-anchor="end">{escape(LABELS[r["s"]])}</text>')
        w = panel_w * r["rps"] / max_rps
        o.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{c}"/>')
        o.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_h * 0.7}">{r["rps"]:,.0f} (p99 {r["p99"]:.1f} ms)</text>')
        cw = panel_w * (r["proxy_cpu"] or 0) / max_cpu
        o.append(f'<rect x="{x2}" y="{y}" width="{cw:.1f}" height="{bar_h}" fill="{c}"/>')
        o.append(f'<text x="{x2 + cw + 4:.1f}" y="{y + bar_h * 0.7}">{(r["proxy_cpu"] or 0):.0f}</text>')
    bottom = top + len(rows) * (bar_h + gap)
    o.append(f'<line x1="{left}" y1="{top - 4}" x2="{left}" y2="{bottom}" stroke="#333"/>')
    o.append(f'<line x1="{x2}" y1="{top - 4}" x2="{x2}" y2="{bottom}" stroke="#333"/>')
    legend_y = bottom + 20
    marks = []
    if ngx:
        marks.append((0.9 * ngx["rps"], "#4e79a7", "0.9x nginx (free-route target)"))
    if ceiling:
        marks.append((ceiling, "#e15759", "Ed25519 verification ceiling (criterion x workers)"))
    for j, (v, c, text) in enumerate(marks):
        x = left + panel_w * v / max_rps
        o.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{bottom}" stroke="{c}" stroke-dasharray="4,3"/>')
        o.append(f'<line x1="{left}" y1="{legend_y + j * 18 - 4}" x2="{left + 24}" y2="{legend_y + j * 18 - 4}" '
                 f'stroke="{c}" stroke-dasharray="4,3"/>')
        o.append(f'<text x="{left + 30}" y="{legend_y + j * 18}">{escape(text)}: {v:,.0f} req/s</text>')
    if "gateway" in idle:
        g = idle["gateway"]
        t = f'RSS with {g["connections"]} idle connections: gateway {g["rss_kb"] / 1024:.1f} MB'
        if "nginx" in idle:
            t += f', nginx {idle["nginx"]["rss_kb"] / 1024:.1f} MB'
        o.append(f'<text x="{left}" y="{legend_y + len(marks) * 18}">{escape(t)}</text>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


if __name__ == "__main__":
    main()
