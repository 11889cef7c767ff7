#!/usr/bin/env python3
"""MONAI's GeneralizedDiceLoss, TverskyLoss and DiceLoss(soft_label=True) timed in the protocol
of shared/anchors/bench_dice.py (whose harness, inputs and retry-on-load this reuses), on the
same three cases: the like-for-like anchors of the family members that script does not time.
Tags: "a-gdl", "b-tversky", "c-soft", ... (the first word names the case and the loss).

usage (from the anchors folder, with its venv):
  python monai_family.py --warmup 5 --runs 30 --json OUT.json
"""
import argparse
import json
import os
import sys
import warnings

import torch

sys.path.insert(0, os.environ.get("ANCHORS", os.getcwd()))
import bench_dice  # noqa: E402  (shared/anchors)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--retries", type=int, default=1)
    ap.add_argument("--wait-idle", type=float, default=600.0)
    ap.add_argument("--json", default="results_family.json")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import monai
    from monai.losses import DiceLoss, GeneralizedDiceLoss, TverskyLoss

    bench_dice.RETRY["max"], bench_dice.RETRY["wait"] = args.retries, args.wait_idle
    gen = torch.Generator().manual_seed(1234)
    a = bench_dice.make_binary((8, 1, 256, 256), gen)
    b = bench_dice.make_multiclass((8, 4, 128, 128), 4, gen)
    c = bench_dice.make_multiclass((2, 4, 64, 64, 64), 4, gen)
    cases = []
    for tag, (x, t), kw in [("a", a, dict(sigmoid=True)),
                            ("b", b, dict(softmax=True, to_onehot_y=True)),
                            ("c", c, dict(softmax=True, to_onehot_y=True))]:
        opts = ",".join(kw)
        for suffix, name, loss in [
            ("gdl", f"GeneralizedDiceLoss({opts})", GeneralizedDiceLoss(**kw)),
            ("tversky", f"TverskyLoss({opts})", TverskyLoss(**kw)),
            ("soft", f"DiceLoss({opts},soft_label)", DiceLoss(soft_label=True, **kw)),
        ]:
            case = bench_dice.bench_case(f"{tag}-{suffix} MONAI {name}", loss, x, t,
                                         args.warmup, args.runs)
            if case is not None:
                cases.append(case)
                print(f"{case['name']}: fwd {case['fwd']['median_ms']:.3f} ms, "
                      f"fwd+bwd {case['fwd_bwd']['median_ms']:.3f} ms")
    env = {"torch": torch.__version__, "monai": monai.__version__,
           "torch.get_num_threads": torch.get_num_threads(), "os.cpu_count": os.cpu_count()}
    json.dump({"env": env, "cases": cases}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
