"""jdlm on several devices and hosts, with JAX's own machinery: a `Mesh` with axes `data` and `model`, partition
rules as data, `NamedSharding`s, and `jax.distributed` for several hosts.

Tensor parallel over `model` (Megatron's layout: attention heads, the MLP hidden axis and the vocabulary are split,
d_model never is), data parallel over `data` (the batch; weights are replicated across it):

    embed [V, D]       vocab over model        q [D, N, H], k/v [D, K, H]   heads over model
    lm_head [D, V]     vocab over model        o [N, H, D]                  heads over model
    norms [D]          replicated              gate/up [D, F], down [F, D]  MLP hidden over model
    prompt, decode state [B, ...]  batch over data;   KV cache [B, L, K, H]  batch over data, kv heads over model

The model code names no mesh. Weights get their layout from `PARAM_AXES` (logical axis names per leaf) through
`LOGICAL_AXIS_RULES` (logical name -> mesh axis), so any mesh runs the same code; `jax.jit` propagates the rest.
The decode loop pins only what it creates itself (its state and KV cache) through `constrain`.

A model dimension that does not divide its mesh axis (Dream-7B's 28 heads over model=8) is refused with an error
naming the sizes that work, never silently replicated: a replicated 8B weight set runs out of memory later with
a far less helpful message.

    from jdlm import sharding
    mesh = sharding.make_mesh(model=2)                   # every visible device: data = count / 2
    params, tok = jdlm.load("ckpt", mesh=mesh)           # restored straight into its shards by orbax
    jdlm.decode(params, prompt, strategy)                # runs on the mesh of `params`; same tokens as one device

docs/scaling.md has the launch on TPU pods and GPU hosts.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jdlm.config import ModelConfig
from jdlm.errors import ShardingError

# ---------------------------------------------------------------- names and rules (data)

DATA, MODEL = "data", "model"  # mesh axes
MESH_AXES = (DATA, MODEL)

# Logical axis names (maxtext's): what an array axis means, independent of any mesh.
BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
MLP = "mlp"
VOCAB = "vocab"

LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    (BATCH, DATA),
    (HEADS, MODEL),
    (KV_HEADS, MODEL),
    (MLP, MODEL),
    (VOCAB, MODEL),
    (EMBED, None),
    (HEAD_DIM, None),
    (LENGTH, None),
)

# Logical axes of every leaf of `Params.weights`, by its name (jdlm/model.py's layout).
PARAM_AXES: dict[str, tuple[str, ...]] = {
    "embed": (VOCAB, EMBED), "lm_head": (EMBED, VOCAB), "final_norm": (EMBED,),
    "attn_norm": (EMBED,), "mlp_norm": (EMBED,),
    "q": (EMBED, HEADS, HEAD_DIM), "k": (EMBED, KV_HEADS, HEAD_DIM), "v": (EMBED, KV_HEADS, HEAD_DIM),
    "q_bias": (HEADS, HEAD_DIM), "k_bias": (KV_HEADS, HEAD_DIM), "v_bias": (KV_HEADS, HEAD_DIM),
    "o": (HEADS, HEAD_DIM, EMBED),
    "gate": (EMBED, MLP), "up": (EMBED, MLP), "down": (MLP, EMBED),
    # quantised weights' scales (jdlm/quantize.py): their weight's output axes, split the same way
    "q_scale": (HEADS, HEAD_DIM), "k_scale": (KV_HEADS, HEAD_DIM), "v_scale": (KV_HEADS, HEAD_DIM),
    "o_scale": (EMBED,), "gate_scale": (MLP,), "up_scale": (MLP,), "down_scale": (EMBED,),
}

# The decode state's batched fields (jdlm/decoding/state.py); its scalars are replicated.
STATE_AXES: dict[str, tuple[str, ...]] = {
    "tokens": (BATCH, LENGTH), "nfe": (BATCH,), "done": (BATCH,), "key": (BATCH,),
    "revealed_at": (BATCH, LENGTH), "revealed_conf": (BATCH, LENGTH),
}
KV_CACHE_AXES = (BATCH, LENGTH, KV_HEADS, HEAD_DIM)  # every layer's k and v

# A weight this large (elements) must be split over `model` when that axis has more than one device.
LARGE_PARAM = 1 << 20


def logical_spec(axes: tuple[str, ...], rules=LOGICAL_AXIS_RULES) -> PartitionSpec:
    """The PartitionSpec of an array whose axes have these logical names."""
    table = dict(rules)
    return PartitionSpec(*(table[a] for a in axes))


def model_sizes(config: ModelConfig) -> dict[str, int]:
    """The length of every logical weight axis for this config."""
    return {VOCAB: config.vocab_size, EMBED: config.d_model, HEADS: config.n_heads, KV_HEADS: config.n_kv_heads,
            HEAD_DIM: config.head_dim, MLP: config.mlp_hidden}


# ---------------------------------------------------------------- meshes


def make_mesh(data: int | None = None, model: int | None = None, devices=None) -> Mesh:
    """A Mesh with axes ("data", "model") over `devices` (default: every visible device, all hosts).

    Defaults: model = 1 (pure data parallel), data = devices // model. A product below the device count uses the
    first data * model devices. `model` is the fast-varying axis, so tensor-parallel groups stay within a host
    (NVLink, ICI) when model <= devices per host. Axes are Auto: jit propagates shardings from the inputs.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    for name, value in (("data", data), ("model", model)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ShardingError(f"mesh {name} must be a positive integer, got {value!r}")
    model = model or 1
    if data is None:
        if n % model:
            raise ShardingError(f"mesh model={model} does not divide the {n} visible devices; choose model among "
                                f"{', '.join(map(str, _divisors(n)))}, or give data= too")
        data = n // model
    if data * model > n:
        raise ShardingError(f"mesh data={data} x model={model} needs {data * model} devices, but {n} are visible; "
                            f"choose sizes whose product is at most {n}")
    return jax.make_mesh((data, model), MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices[:data * model])


def parse_mesh(text: str) -> dict[str, int]:
    """"data=2,model=4" (either may be left out) -> {"data": 2, "model": 4}, the keywords of `make_mesh`."""
    out: dict[str, int] = {}
    for item in text.replace(" ", "").split(","):
        name, eq, value = item.partition("=")
        if not eq or name not in MESH_AXES:
            raise ShardingError(f"--mesh {text!r}: expected data=N,model=M (either may be left out), got {item!r}")
        if name in out:
            raise ShardingError(f"--mesh {text!r}: {name} is given twice")
        if not value.isdigit() or int(value) < 1:
            raise ShardingError(f"--mesh {text!r}: {name} must be a positive integer, got {value!r}")
        out[name] = int(value)
    return out


def describe(mesh: Mesh | None) -> str:
    """'mesh data=2 x model=4 (8 gpu devices)', or 'one device'."""
    if mesh is None:
        return "one device"
    return f"mesh data={mesh.shape[DATA]} x model={mesh.shape[MODEL]} ({mesh.size} {mesh.devices.flat[0].platform} " \
           "devices)"


def mesh_of(params) -> Mesh | None:
    """The mesh `params` live on (placed by `shard_params` or `jdlm.load(..., mesh=)`), or None: on one device,
    or traced (inside a caller's jit)."""
    leaf = jax.tree.leaves(params)[0]
    if isinstance(leaf, jax.core.Tracer) or not isinstance(leaf, jax.Array):
        return None
    sharding = leaf.sharding
    if isinstance(sharding, NamedSharding) and set(MESH_AXES) <= set(sharding.mesh.axis_names):
        return sharding.mesh
    return None


# ---------------------------------------------------------------- parameters


def check_fits(config: ModelConfig, axis_sizes: Mapping[str, int], rules=LOGICAL_AXIS_RULES) -> None:
    """Raises ShardingError unless every weight axis split over a mesh axis divides evenly by its size."""
    sizes = model_sizes(config)
    for mesh_axis, count in axis_sizes.items():
        split = [logical for logical, target in rules if target == mesh_axis and logical in sizes]
        bad = [f"{name} {sizes[name]}" for name in split if sizes[name] % count]
        if count > 1 and bad:
            fits = ", ".join(map(str, _divisors(math.gcd(*(sizes[name] for name in split)))))
            raise ShardingError(f"mesh {mesh_axis}={count} does not divide this model's {', '.join(bad)}; choose "
                                f"{mesh_axis} among {fits}, the sizes that divide its "
                                f"{', '.join(f'{n} {sizes[n]}' for n in split)}")


def param_specs(config: ModelConfig, rules=LOGICAL_AXIS_RULES, quantize: str | None = None):
    """The PartitionSpec of every leaf of `Params.weights` for this config (same pytree structure); `quantize`:
    of the weights quantised that way (jdlm/quantize.py: with their scales)."""
    from jdlm.model import param_shapes

    return jax.tree_util.tree_map_with_path(lambda path, _: logical_spec(PARAM_AXES[_leaf_name(path)], rules),
                                            param_shapes(config, quantize=quantize).weights)


def param_shardings(config: ModelConfig, mesh: Mesh, rules=LOGICAL_AXIS_RULES, quantize: str | None = None):
    """The NamedSharding of every leaf of `Params.weights` (quantised by `quantize`, as in `param_specs`);
    ShardingError when the model does not fit the mesh."""
    check_fits(config, dict(mesh.shape), rules)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(config, rules, quantize))


def shard_params(params, mesh: Mesh):
    """`params` placed on `mesh` by the rules (one device_put per leaf), checked by `check_sharded`.

    Each host must hold the same values (e.g. `init_params` with one seed). To load a checkpoint larger than one
    device, use `jdlm.load(path, mesh=mesh)`, which reads every shard straight to its device.
    """
    from jdlm.model import is_fused
    from jdlm.quantize import mode_of

    if is_fused(params):
        raise ShardingError("these params have fused projections (jdlm.fuse_projections), which a mesh does not "
                            "take; shard the params as loaded (before fusing)")
    weights = jax.device_put(params.weights, param_shardings(params.config, mesh, quantize=mode_of(params.weights)))
    placed = params.replace(weights=weights)
    check_sharded(placed, mesh)
    return placed


def check_sharded(params, mesh: Mesh, min_size: int = LARGE_PARAM) -> None:
    """Raises ShardingError when a weight of at least `min_size` elements is not on `mesh`, or is replicated
    while the mesh has a `model` axis to split it over."""
    split = mesh.shape[MODEL] > 1
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params.weights)[0]:
        if leaf.size < min_size:
            continue
        sharding = getattr(leaf, "sharding", None)
        on_mesh = isinstance(sharding, NamedSharding) and sharding.mesh == mesh
        if not on_mesh or (split and MODEL not in jax.tree.leaves(tuple(sharding.spec))):
            bad.append(_leaf_path(path))
    if bad:
        raise ShardingError(f"{len(bad)} large weights are replicated or off the mesh ({describe(mesh)}), e.g. "
                            f"{', '.join(bad[:3])}; place them with jdlm.sharding.shard_params or "
                            "jdlm.load(path, mesh=mesh)")


def bytes_per_device(tree) -> dict:
    """{device: bytes of `tree`'s shards held there}."""
    out: dict = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out


# ---------------------------------------------------------------- the batch and the decode state


def shard_rows(mesh: Mesh | None, *arrays):
    """Row-batched arrays [B, ...] (None passes through) placed with the batch over `data`, padded first to a
    multiple of the data axis by repeating the last row (a copy decodes exactly as its original, so the batch's
    forward count is unchanged; `take_rows` drops the copies). Without a mesh: unchanged."""
    if mesh is None:
        return arrays
    rows = next(a.shape[0] for a in arrays if a is not None)
    padded = -(-rows // mesh.shape[DATA]) * mesh.shape[DATA]
    index = np.minimum(np.arange(padded), rows - 1)
    return tuple(None if a is None else jax.device_put(a[index] if padded > rows else a,
                                                       NamedSharding(mesh, PartitionSpec(DATA)))
                 for a in arrays)


def take_rows(tree, rows: int):
    """The first `rows` rows of every batched (ndim >= 1) array of `tree`: undoes `shard_rows`'s padding."""
    return jax.tree.map(lambda a: a[:rows] if a.ndim and a.shape[0] > rows else a, tree)


def active(mesh: Mesh | None):
    """Context in which `constrain` sees `mesh` (jax.set_mesh); a no-op context without one."""
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def constrain(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    """maxtext's `maybe_shard_with_logical`: pins x's layout to its logical axes on the active mesh (see `active`);
    unchanged outside one. A mesh axis that does not divide its array axis leaves that axis unsplit."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
        return x
    # () replicates; zip stops at the shorter of shape and spec.
    spec = [None if target is None or n % mesh.shape[target] else target
            for n, target in zip(x.shape, logical_spec(axes))]
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))


def constrain_state(state):
    """The decode state with its batched fields and KV cache pinned (batch over data, kv heads over model)."""
    fields = {name: constrain(getattr(state, name), axes) for name, axes in STATE_AXES.items()}
    kv = state.kv
    if kv is not None:
        kv = kv.replace(k=tuple(constrain(a, KV_CACHE_AXES) for a in kv.k),
                        v=tuple(constrain(a, KV_CACHE_AXES) for a in kv.v))
    return state.replace(kv=kv, **fields)


def replicate(tree):
    """Every array of `tree` whole on every device of the active mesh (small results that each host reads)."""
    return jax.tree.map(lambda a: constrain(a, ()), tree)


# ---------------------------------------------------------------- several hosts

COORDINATOR_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """Joins this process to a multi-host run (`jax.distributed.initialize`); a no-op on one host.

    Call it first, before anything touches a device. Reads, in order:
      JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES, JAX_PROCESS_ID: all three, for
        multi-node GPU runs without a cluster manager (scripts/gpu_run.sh sets them);
      JDLM_DISTRIBUTED=1: let JAX detect the cluster (Cloud TPU pod slices, GKE, SLURM, Open MPI);
      SLURM_NTASKS or OMPI_COMM_WORLD_SIZE above 1: the same detection, launched by srun / mpirun.
    Returns True when this call initialised the distributed runtime.
    """
    env = os.environ if environ is None else environ
    if jax.distributed.is_initialized():
        return False
    given = [name for name in COORDINATOR_ENV if env.get(name)]
    if given and len(given) < len(COORDINATOR_ENV):
        missing = [name for name in COORDINATOR_ENV if name not in given]
        raise ShardingError(f"{', '.join(given)} set but {', '.join(missing)} not: a multi-host run needs all of "
                            f"{', '.join(COORDINATOR_ENV)} (or JDLM_DISTRIBUTED=1 where JAX detects the cluster)")
    if given:
        count, index = env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]
        if not (count.isdigit() and index.isdigit() and int(index) < int(count)):
            raise ShardingError(f"JAX_NUM_PROCESSES={count} and JAX_PROCESS_ID={index} must be integers with "
                                "0 <= JAX_PROCESS_ID < JAX_NUM_PROCESSES")
        if int(count) == 1:
            return False
        jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], int(count), int(index))
        return True
    launched = any(env.get(name, "1").isdigit() and int(env.get(name, "1")) > 1
                   for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"))
    if env.get("JDLM_DISTRIBUTED", "") == "1" or launched:
        jax.distributed.initialize()
        return True
    return False


# ---------------------------------------------------------------- helpers


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _leaf_name(path) -> str:
    return str(getattr(path[-1], "key", getattr(path[-1], "idx", path[-1])))


def _leaf_path(path) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
