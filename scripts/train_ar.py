"""Train `tiny-ar`, the small causal model on the same tokenizer (for AR-guided decoding); resumable.

    python scripts/train_ar.py --run-dir runs/tiny-ar --export jdlm/models/tiny-ar
"""

from jdlm.training.script import main

if __name__ == "__main__":
    main(objective="ar", model="tiny-ar", export_dir="jdlm/models/tiny-ar")
