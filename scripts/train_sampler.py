"""Train a joint sampler head (ADJUST) for `tiny` or another jdlm model: the same as `jdlm train-sampler`.

    python scripts/train_sampler.py --model tiny --run-dir runs/sampler      # writes runs/sampler/head
"""

import sys

from jdlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-sampler", *sys.argv[1:]]))
