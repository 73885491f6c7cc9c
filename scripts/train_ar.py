"""Train `tiny-ar`, the small causal model on the same tokenizer (for AR-guided decoding); resumable.

    python scripts/train_ar.py --run-dir runs/tiny-ar          # exports runs/tiny-ar/model
    python scripts/train_ar.py --run-dir runs/tiny-ar --ship   # replaces the shipped jdlm/models/tiny-ar
"""

from jdlm.training.script import main

if __name__ == "__main__":
    main(objective="ar", model="tiny-ar")
