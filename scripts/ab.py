#!/usr/bin/env python3
"""The ratio table of scripts/bench-ab.sh: for each row (backend, case, loss, path), the median
over the rounds of the working tree's time divided by REV's, with the spread of the ratio over
the rounds (most favourable and least favourable pairing), forward+backward and forward.
A row whose most favourable ratio is still above 1.25 is flagged SLOWER.

usage: ab.py OUT_DIR ROUNDS REV
"""
import json
import statistics
import sys

out, rounds, rev = sys.argv[1], int(sys.argv[2]), sys.argv[3]
FLAG = 1.25


def load(side):
    rows = {}
    for r in range(1, rounds + 1):
        for row in json.load(open(f"{out}/{side}-{r}.json")):
            key = (row.get("backend", "core"), row["case"], row["loss"], row.get("path", "fused"))
            rows.setdefault(key, {"fwd_ms": [], "fwd_bwd_ms": []})
            for field in ("fwd_ms", "fwd_bwd_ms"):
                rows[key][field].append(row[field])
    return rows


base, head = load("base"), load("head")
print(f"\n| backend | case | loss | {rev} fwd+bwd ms | now fwd+bwd ms | ratio [spread] | "
      f"{rev} fwd ms | now fwd ms | ratio [spread] |")
print("|---|---|---|---|---|---|---|---|---|")
slower = []
for key in head:
    if key not in base:
        continue
    cells = []
    for field in ("fwd_bwd_ms", "fwd_ms"):
        b, h = base[key][field], head[key][field]
        ratio = statistics.median(h) / statistics.median(b)
        best, worst = min(h) / max(b), max(h) / min(b)
        mark = ""
        if best > FLAG:
            mark = " SLOWER"
            slower.append((key, field, ratio))
        cells.append(f"{statistics.median(b):.3f} | {statistics.median(h):.3f} | "
                     f"{ratio:.2f}× [{best:.2f}, {worst:.2f}]{mark}")
    print(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
print(f"\n{len(slower)} row(s) slower than {FLAG}× beyond the spread over {rounds} round(s)"
      + (": " + ", ".join(f"{k[0]} {k[1]} {k[2]} {f} {r:.2f}×" for k, f, r in slower)
         if slower else "."))
