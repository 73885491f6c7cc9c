"""Plots scripts/eval_joint.py results: distance to exact sampling against k (tokens per full forward), the
marginal baseline beside the joint sampler head, with exact sampling's second seed as the noise floor.

    python scripts/plot_joint.py docs/eval/joint/headB_k2.json docs/eval/joint/headB_k4.json \\
        docs/eval/joint/headB_k8.json --out docs/eval/joint/joint.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="joint_eval.json files, one per k")
    p.add_argument("--out", required=True, help="the PNG to write")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted((json.loads(Path(f).read_text()) for f in args.results), key=lambda r: r["k"])
    ks = [r["k"] for r in runs]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, label in ((axes[0], "mauve_vs_exact", "MAUVE vs exact (higher: closer)"),
                              (axes[1], "ngram_js_vs_exact", "n-gram JS vs exact (lower: closer)")):
        for name, style in (("marginal", "s--"), ("joint", "o-")):
            ax.plot(ks, [r[f"{name}_k{r['k']}"][metric] for r in runs], style, label=f"{name} (k per forward)")
        floor = sum(r["exact_seed1"][metric] for r in runs) / len(runs)
        ax.axhline(floor, color="gray", lw=1, ls=":", label="exact, another seed (noise floor)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("tokens per full forward (k)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{runs[0]['model']}: pycode, {runs[0]['prompts']} prompts, {runs[0]['gen_length']} tokens in blocks "
                 f"of {runs[0]['block_length']}, temperature 1", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
