"""Trains the sampler head of tests/test_joint.py on the devices this process sees, and prints its weights.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu python tests/sampler_dp_worker.py RUN_DIR
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jdlm
from jdlm.joint.train import train_sampler
from tests.test_joint import CONFIG, peaked_base


def main(run_dir: str) -> None:
    jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py
    state = train_sampler(CONFIG, run_dir, base=peaked_base(), tokenizer=jdlm.load("tiny")[1], progress=False)
    leaves = [np.asarray(leaf, np.float64).ravel().tolist() for leaf in jax.tree.leaves(state.weights)]
    shardings = {str(len(leaf.sharding.device_set)) for leaf in jax.tree.leaves(state.weights)}
    print(json.dumps({"devices": jax.device_count(), "held_on": sorted(shardings), "leaves": leaves,
                      "step": int(jnp.asarray(state.step))}))


if __name__ == "__main__":
    main(sys.argv[1])
