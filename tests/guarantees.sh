#!/usr/bin/env bash
# Run the fault and attack suites and print the "Guarantees" tables (docs/guarantees.md) from their own
# output: each fault test writes target/guarantees/<name>.json; attack suites are counted from
# cargo's test summary.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
rm -rf target/guarantees
for suite in faults attacks receipts paths; do
  cargo test --locked -q -p tollgate-e2e --test "$suite" 2>&1 | tee -a "$out" | grep -E "^test result" | sed "s/^/$suite: /" >&2
done
python3 - "$out" <<'PY'
import glob, json, re, sys
rows = [json.load(open(f)) for f in sorted(glob.glob("target/guarantees/*.json"))]
print("| fault injected | requests | served and paid | refused (fail closed) | served unpaid | events lost |")
print("|---|---:|---:|---:|---:|---:|")
for r in rows:
    refused = sum(v or 0 for k, v in r.items() if k.startswith("refused"))
    print(f"| {r['fault']} | {r.get('requests', '-')} | {r.get('served_paid', '-')} | {refused} | {r['served_unpaid']} | {r['lost_events']} |")
text = open(sys.argv[1]).read()
counts = re.findall(r"test result: ok\. (\d+) passed", text)
print()
print("| attack suite | tests (each refuses one attack family with its code) | all refused |")
print("|---|---:|---|")
for name, n in zip(["HTTP (tests/tests/attacks.rs)", "receipts / JWT (tests/tests/receipts.rs)", "encoded paths (tests/tests/paths.rs)"], counts[1:]):
    print(f"| {name} | {n} | yes |")
PY
rm -f "$out"
