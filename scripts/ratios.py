#!/usr/bin/env python3
"""Ratio table of burn-dice's benchmark (benches/compare.rs --json) against MONAI's
(shared/anchors/bench_dice.py --json), measured in the same sitting.

usage: ratios.py monai.json ours.json
"""
import json
import platform
import sys

monai = json.load(open(sys.argv[1]))
ours = json.load(open(sys.argv[2]))
ref = {}
for c in monai["cases"]:
    tag = c["name"].split()[0]
    if "MONAI" in c["name"] and tag in "abc":
        ref[tag] = (c["fwd"]["median_ms"], c["fwd_bwd"]["median_ms"])
names = {"a": "a) sigmoid dense [8,1,256,256]", "b": "b) softmax indices [8,4,128,128]",
         "c": "c) softmax indices [2,4,64,64,64]"}
env = monai["env"]
print(f"machine: {platform.processor() or platform.machine()}, {env['os.cpu_count']} cores; "
      f"torch {env['torch']} ({env['torch.get_num_threads']} threads), MONAI {env['monai']}\n")
print("| case | MONAI fwd / fwd+bwd ms | backend | loss | path | fwd ms (×MONAI) "
      "| fwd+bwd ms (×MONAI) | peak extra memory (× logits) |")
print("|---|---|---|---|---|---|---|---|")
for r in ours:
    m = ref.get(r["case"])
    if m is None:
        continue
    print(f"| {names[r['case']]} | {m[0]:.3f} / {m[1]:.3f} | {r['backend']} | {r['loss']} "
          f"| {r['path']} | {r['fwd_ms']:.3f} ({r['fwd_ms'] / m[0]:.2f}×) "
          f"| {r['fwd_bwd_ms']:.3f} ({r['fwd_bwd_ms'] / m[1]:.2f}×) "
          f"| {r['peak_extra_bytes'] / r['logits_bytes']:.2f} |")
print("\nRatios of the family losses are against MONAI's DiceLoss (the anchor times no other "
      "MONAI loss): they show what each extra term costs, not a like-for-like comparison.")
