"""Runs decodes on one device and on meshes of 8 host CPU devices; prints what tests/test_sharding.py checks, as
JSON. Run in its own process: the device count is fixed when JAX starts.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python tests/sharding_worker.py WORKDIR
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import jdlm
from jdlm import sharding
from jdlm import strategies as S
from jdlm.decoding import decode_steps
from jdlm.errors import ShardingError
from jdlm.model import Params, param_shapes
from jdlm.training import presets

# The small-model tokenizer's vocabulary (1024); heads, kv heads (grouped: 2 query heads each), MLP hidden and
# vocabulary all divide 8. Dream's layout adds the q/k/v biases and the shifted logits.
CONFIG = dataclasses.replace(presets.tiny_mdm_config(), family="dream", qkv_bias=True, logits_shift=True,
                             d_model=32, n_layers=2, n_heads=16, n_kv_heads=8, head_dim=4, mlp_hidden=64)
STRATEGIES = {"low_confidence": "low_confidence", "dual": "threshold:0.9 dual", "prefix": "threshold:0.9 prefix"}
# Each mesh runs two of the strategies, each strategy two meshes (a compile costs seconds on CPU).
MESHES = {(1, 8): ("low_confidence", "dual"), (2, 4): ("dual", "prefix"), (8, 1): ("prefix", "low_confidence")}
LARGE = 1000  # elements: every matrix of CONFIG is larger, every norm and bias smaller


def random_checkpoint(directory: str, seed: int = 0) -> Params:
    """Saves standard normal weights with the small-model tokenizer in `directory`; returns them.

    Made on the host (eager per-tensor initialisation compiles for seconds). Large weights make peaked predictions:
    with near-uniform ones, a summation order that differs in the last bit (a split matrix product, another batch
    size) can flip a near-tie between two positions' confidences."""
    rng = np.random.default_rng(seed)
    shapes = param_shapes(CONFIG, jnp.float32)
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)), shapes)
    with tempfile.TemporaryDirectory() as tmp:
        jdlm.save(directory, params, tokenizer_files=presets.build_task_tokenizer(tmp))
    return params


def decoded(params, prompt, mask, spec: str) -> dict:
    strategy = S.parse_strategy(f"{spec} gen_length=16 block_length=8 steps=16")
    r = jdlm.decode(params, prompt, strategy, prompt_mask=mask)
    return dict(tokens=np.asarray(r.tokens).tolist(), nfe=np.asarray(r.nfe).tolist(), forwards=int(r.forwards),
                trace=np.asarray(r.trace.step).tolist())


def big_bytes_per_device(params) -> list[int]:
    """Bytes of the large weights' shards on each device, device order."""
    big = [leaf for leaf in jax.tree.leaves(params.weights) if leaf.size >= LARGE]
    held = sharding.bytes_per_device(big)
    return [held.get(d, 0) for d in jax.devices()]


def cli(*args: str) -> dict:
    """`jdlm ARGS` in this process (8 devices): exit code, stdout, stderr."""
    import contextlib
    import io

    from jdlm.cli import main as jdlm_main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = jdlm_main(list(args))
    return dict(code=code, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def main(workdir: str) -> None:
    jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py
    out: dict = {"devices": jax.device_count()}
    checkpoint_dir = f"{workdir}/checkpoint"
    params = random_checkpoint(checkpoint_dir)
    # Three prompts of different lengths, left-padded: the batch (3) is padded to each mesh's data axis.
    prompt, mask = jdlm.pad_prompts([[5, 6, 7, 8, 9], [10, 11, 12], [3, 4, 5, 6, 7, 8, 9, 10, 11]], CONFIG.pad_id,
                                    buckets=None)
    out["one_device"] = {name: decoded(params, prompt, mask, spec) for name, spec in STRATEGIES.items()}
    big = [leaf for leaf in jax.tree.leaves(params.weights) if leaf.size >= LARGE]
    out["big_bytes"] = sum(leaf.nbytes for leaf in big)

    out["meshes"] = {}
    for (data, model), names in MESHES.items():
        mesh = sharding.make_mesh(data=data, model=model)
        placed = sharding.shard_params(params, mesh)
        out["meshes"][f"{data}x{model}"] = dict(
            data=data, model=model, big_bytes_per_device=big_bytes_per_device(placed),
            result={name: decoded(placed, prompt, mask, STRATEGIES[name]) for name in names})

    mesh = sharding.make_mesh(data=2, model=4)
    placed = sharding.shard_params(params, mesh)
    steps = list(decode_steps(placed, prompt, S.parse_strategy("low_confidence gen_length=16 block_length=8 "
                                                               "steps=16"), prompt_mask=mask))
    out["decode_steps_last"] = np.asarray(steps[-1].tokens).tolist()
    try:  # the same weights replicated over a mesh that has a model axis
        sharding.check_sharded(params.replace(weights=jax.device_put(
            params.weights, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))), mesh, min_size=LARGE)
        out["replicated_check"] = "passed"
    except ShardingError as e:
        out["replicated_check"] = str(e)

    loaded = jdlm.load_params(checkpoint_dir, mesh=mesh)
    out["loaded"] = dict(
        shardings_match=jax.tree.all(jax.tree.map(lambda a, s: a.sharding == s, loaded.weights,
                                                  sharding.param_shardings(CONFIG, mesh))),
        values_match=jax.tree.all(jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()),
                                               loaded.weights, params.weights)),
        big_bytes_per_device=big_bytes_per_device(loaded))

    fast = ["--gen-length", "16", "--block-length", "8", "--quiet"]
    out["cli"] = dict(
        bench_tp=cli("bench", "--model", checkpoint_dir, "--mesh", "data=2,model=4", "--strategy", "threshold:0.9",
                     "--cache", "dual", "--batch-size", "3", "--prompt-length", "8", "--repeats", "1",
                     "--json", f"{workdir}/bench.json", *fast),
        eval_dp=cli("eval", "--model", checkpoint_dir, "--task", "arithmetic", "--limit", "3", "--batch-size", "3",
                    "--strategy", "threshold:0.9", "--cache", "dual", "--json", f"{workdir}/eval.json", *fast),
        heads_do_not_divide=cli("bench", "--model", "tiny", "--mesh", "model=2", *fast),
        too_many_devices=cli("bench", "--model", checkpoint_dir, "--mesh", "data=4,model=4", *fast))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
