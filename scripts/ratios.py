#!/usr/bin/env python3
"""Ratio table of burn-dice's benchmark (benches/compare.rs --json) against MONAI's same loss
(shared/anchors/bench_dice.py --json for DiceLoss, DiceCELoss and DiceFocalLoss;
scripts/monai_family.py --json for GeneralizedDiceLoss, TverskyLoss and DiceLoss with
soft_label), measured in the same sitting.

usage: ratios.py monai.json family.json ours.json
"""
import json
import platform
import sys

anchors = json.load(open(sys.argv[1]))
family = json.load(open(sys.argv[2]))
ours = json.load(open(sys.argv[3]))
# MONAI's tag suffix of each of our losses (bench_dice.py: "a MONAI …", "a-ce …", "a-focal …";
# monai_family.py: "a-gdl …", "a-tversky …", "a-soft …").
SUFFIX = {"DiceLoss": "", "DiceCELoss": "-ce", "DiceFocalLoss": "-focal",
          "GeneralizedDiceLoss": "-gdl", "TverskyLoss": "-tversky", "DiceLoss(soft_label)": "-soft"}
ref = {}
for c in anchors["cases"] + family["cases"]:
    if "MONAI" in c["name"]:
        ref[c["name"].split()[0]] = (c["fwd"]["median_ms"], c["fwd_bwd"]["median_ms"])
names = {"a": "a) sigmoid dense [8,1,256,256]", "b": "b) softmax indices [8,4,128,128]",
         "c": "c) softmax indices [2,4,64,64,64]"}
env = anchors["env"]
print(f"machine: {platform.processor() or platform.machine()}, {env['os.cpu_count']} cores; "
      f"torch {env['torch']} ({env['torch.get_num_threads']} threads), MONAI {env['monai']}\n")
print("Each row against MONAI's same loss on the same inputs.\n")
print("| case | backend | loss | path | MONAI fwd / fwd+bwd ms | fwd ms (×MONAI) "
      "| fwd+bwd ms (×MONAI) | peak extra memory (× logits) |")
print("|---|---|---|---|---|---|---|---|")
for r in ours:
    m = ref.get(r["case"] + SUFFIX.get(r["loss"], "?"))
    if m is None:
        continue
    print(f"| {names[r['case']]} | {r['backend']} | {r['loss']} | {r['path']} "
          f"| {m[0]:.3f} / {m[1]:.3f} "
          f"| {r['fwd_ms']:.3f} ({r['fwd_ms'] / m[0]:.2f}×) "
          f"| {r['fwd_bwd_ms']:.3f} ({r['fwd_bwd_ms'] / m[1]:.2f}×) "
          f"| {r['peak_extra_bytes'] / r['logits_bytes']:.2f} |")
