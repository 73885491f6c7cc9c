"""Average the weights of two checkpoints of one model (a fine-tune and the model it started from), as a new checkpoint.

Weight averaging along a fine-tune ("model soups", WiSE-FT: Wortsman et al. 2022) trades what the fine-tune gained
against what it lost, with no training: `tiny` retrain 5 gained countdown with 4-5 numbers and lost some of 3
numbers; the average with retrain 4 keeps both (docs/training/README.md).

    python scripts/average_models.py runs/tiny5/model runs/tiny6/model --weight 0.5 --out runs/tiny56/model

The result is `(1 - weight) * A + weight * B`, computed in float32 and stored in A's dtype, with A's tokenizer and
a manifest that records both sources. Both checkpoints must share the architecture and the tokenizer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from jdlm.checkpoint import load, save
from jdlm.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def average(path_a: Path, path_b: Path, weight: float, out: Path, overwrite: bool = False) -> Path:
    """Writes `(1 - weight) * A + weight * B` to `out` and returns it; UserError if the two do not match."""
    if not 0.0 <= weight <= 1.0:
        raise UserError(f"--weight {weight} is outside [0, 1]; it is the share of the second checkpoint")
    a, _ = load(path_a)
    b, _ = load(path_b)
    if a.config != b.config:
        raise UserError(f"{path_a} and {path_b} are different architectures; only checkpoints of one model average")
    for name in TOKENIZER_FILES:
        if (path_a / name).read_bytes() != (path_b / name).read_bytes():
            raise UserError(f"{path_a} and {path_b} have different tokenizers ({name}); their ids do not line up")
    mixed = jax.tree.map(lambda x, y: ((1.0 - weight) * x.astype(jnp.float32) + weight * y.astype(jnp.float32))
                         .astype(x.dtype), a.weights, b.weights)
    shown = lambda p: p.name if p.is_absolute() else str(p)  # a manifest holds no absolute path
    sources = {"a": shown(path_a), "b": shown(path_b), "weight_b": weight}
    for key, path in (("a_manifest", path_a), ("b_manifest", path_b)):
        manifest = json.loads((path / "manifest.json").read_text())
        sources[key] = {k: manifest[k] for k in ("training", "steps") if k in manifest}
    return save(out, a.replace(weights=mixed), tokenizer_files=[path_a / n for n in TOKENIZER_FILES],
                manifest={"averaged": sources}, overwrite=overwrite)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path, help="the first checkpoint (its dtype and tokenizer are kept)")
    p.add_argument("b", type=Path, help="the second checkpoint")
    p.add_argument("--weight", type=float, default=0.5, help="share of the second checkpoint (default 0.5)")
    p.add_argument("--out", type=Path, required=True, help="where to write the averaged checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
    args = p.parse_args(argv)
    try:
        print(f"wrote {average(args.a, args.b, args.weight, args.out, args.overwrite)}")
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
