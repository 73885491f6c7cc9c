"""Train `tiny`, jdlm's shipped masked-diffusion model, on the task suite (meant for a GPU; resumable).

    python scripts/train_mdm.py --run-dir runs/tiny          # exports runs/tiny/model
    python scripts/train_mdm.py --run-dir runs/tiny --ship   # replaces the shipped jdlm/models/tiny
"""

from jdlm.training.script import main

if __name__ == "__main__":
    main(objective="mdm", model="tiny")
