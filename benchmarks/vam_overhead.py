"""Parameter and multiply-add overhead of the VAM head over the student's linear classifier.

    python benchmarks/vam_overhead.py [--classes 100] [--input 3x32x32] [--arch resnet8x4 ...] [--csv FILE]

MACs = FLOPs / 2 from ``torch.utils.flop_counter.FlopCounterMode`` for one image (convolutions
and matrix products; element-wise ops, normalisation and pooling are not counted; the VAM's
C x K routing softmax runs once per batch and is not counted either). K = the default
(8, or the largest divisor of D below 8) unless --blocks is given.
"""

from __future__ import annotations

import argparse

import pandas as pd

from kdx.models.routed.vam import vam_cost_rows

DEFAULT_ARCHS = ["resnet8x4", "wrn_16_2", "MobileNetV2"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=DEFAULT_ARCHS)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--input", default="3x32x32")
    ap.add_argument("--blocks", type=int, default=None)
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    shape = [int(s) for s in args.input.split("x")]
    rows = []
    for arch in args.arch:
        rows.extend(vam_cost_rows(arch, args.classes, shape, args.blocks))
    frame = pd.DataFrame(rows)
    if args.csv:
        frame.to_csv(args.csv, index=False)
    wide = []
    for arch, g in frame.groupby("arch", sort=False):
        s, v, o = (g[g["variant"] == k].iloc[0] for k in ("student", "student+vam", "vam-overhead"))
        wide.append({"arch": arch, "D": int(s["D"]), "K": int(s["K"]), "params": int(s["params"]),
                     "params+vam": int(v["params"]), "d_params": f"{int(o['params']):+d} ({o['params_pct']:+.3f}%)",
                     "MACs": int(s["macs"]), "MACs+vam": int(v["macs"]),
                     "d_MACs": f"{int(o['macs']):+d} ({o['macs_pct']:+.5f}%)"})
    print(f"C={args.classes}, input {args.input}, one image")
    print(pd.DataFrame(wide).to_string(index=False))


if __name__ == "__main__":
    main()
