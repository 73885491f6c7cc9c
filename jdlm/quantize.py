"""Weight-only quantisation: int8 (or fp8 e4m3) linear weights with one float32 scale per output channel.

At batch 1 a cached decode step reads every weight once and does little arithmetic on it, so its time is the
weight bytes over the memory bandwidth. Storing the transformer's linear weights in one byte instead of two
halves that read; the activations, the residual stream, attention and the KV cache stay in the compute dtype.

    w [in..., out...] float  ->  w_q = round(w / scale) (int8, or cast to float8_e4m3fn),
                                 scale [out...] float32 = max |w| over the input axes / 127 (int8) or 448 (fp8)
    x @ w  ~=  (x @ w_q.astype(x.dtype)) * scale            (jdlm/model.py's `linear`)

Symmetric (no zero point) and per output channel: the scale multiplies the matmul's output, so the int8 -> bf16
convert is the only thing between the stored weight and the GEMM, and XLA fuses it into the GEMM's operand read
on GPU. Quantised: q, k, v, o, gate, up, down of every layer. Kept in the compute dtype: the embedding table (a
gather, not a matmul), the norms, the q/k/v biases, and the LM head: it writes straight onto the logits that choose
every token, a tied-embedding model shares it with the embedding table, and at LLaDA-8B it is 1.0 GB of the 8 GB
an int8 step reads (docs/quantization.md).

In `Params.weights` a quantised weight `q` keeps its name, shape and layout, in the quantised dtype, and gains a
sibling `q_scale` with the shape of its output axes (but for a fused int8 layer's gate and up, stored as byte pairs:
`pair_gate_up`); `jdlm.sharding` splits each scale like its weight's output
axes. docs/quantization.md has the measured accuracy cost and speed.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from jdlm.errors import UserError


class QuantizationError(UserError):
    """An unknown quantisation mode, or one the backend cannot run; the message names what works."""


# Mode -> (stored dtype, largest stored magnitude).
MODES: dict[str, tuple[jnp.dtype, float]] = {
    "int8": (jnp.dtype(jnp.int8), 127.0),
    "fp8": (jnp.dtype(jnp.float8_e4m3fn), float(jnp.finfo(jnp.float8_e4m3fn).max)),  # 448
}

# The quantised weights of a layer and how many leading axes each contracts (the input axes; the rest are output
# axes, one scale each): q [D, N, H], k/v [D, K, H], gate/up [D, F], down [F, D] contract 1; o [N, H, D] contracts 2.
INPUT_AXES: dict[str, int] = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}
# The same for a layer fused by jdlm.model.fuse_projections: qkv [D, K, G + 2, H], gate_up [D, 2, F] (or, int8,
# gate_up_pairs [D, F] int16: jdlm/kernels/int8_swiglu.py).
FUSED_INPUT_AXES: dict[str, int] = {"qkv": 1, "o": 2, "gate_up": 1, "down": 1}
PAIRED_INPUT_AXES: dict[str, int] = {name.replace("gate_up", "gate_up_pairs"): axes
                                     for name, axes in FUSED_INPUT_AXES.items()}
SCALE_SUFFIX = "_scale"
SCALE_DTYPE = jnp.dtype(jnp.float32)
PAIRED_DTYPE = jnp.dtype(jnp.int16)  # a fused int8 layer's gate_up_pairs: two int8 values an element
FP8_MIN_CAPABILITY = (8, 9)  # Ada and Hopper have fp8 tensor cores


def check_mode(mode: str | None) -> str | None:
    """`mode` if it is None or a known mode that this backend can run, else a QuantizationError saying why.

    fp8 runs on GPUs of compute capability 8.9 or newer (Ada, Hopper and later), and on CPU (emulated: there only
    to measure its accuracy)."""
    if mode is None:
        return None
    if mode not in MODES:
        raise QuantizationError(f"unknown weight quantisation {mode!r}; choose one of {', '.join(MODES)} "
                                "(or none)")
    if mode == "fp8" and jax.default_backend() != "cpu":
        device = jax.devices()[0]
        capability = compute_capability(device)
        if capability is None:
            raise QuantizationError(f"fp8 weights run on GPUs of compute capability 8.9 or newer (Ada, Hopper) and "
                                    f"on CPU, not on {device.device_kind} ({jax.default_backend()}); use int8")
        if capability < FP8_MIN_CAPABILITY:
            raise QuantizationError(f"fp8 weights need a GPU of compute capability 8.9 or newer (Ada, Hopper), but "
                                    f"{device.device_kind} has compute capability "
                                    f"{'.'.join(map(str, capability))}; use int8")
    return mode


def compute_capability(device) -> tuple[int, ...] | None:
    text = getattr(device, "compute_capability", None)
    try:
        return tuple(int(part) for part in str(text).split(".")) if text else None
    except ValueError:
        return None


def scale_name(name: str) -> str:
    return name + SCALE_SUFFIX


def pair_bytes(gate: jax.Array, up: jax.Array) -> jax.Array:
    """int8 gate, up [..., F] -> int16 [..., F]: gate in each element's low byte, up in its high byte."""
    if gate.dtype != jnp.int8 or up.dtype != jnp.int8 or gate.shape != up.shape:
        raise ValueError(f"want two int8 arrays of one shape, got {gate.dtype}{gate.shape}, {up.dtype}{up.shape}")
    return jax.lax.bitcast_convert_type(jnp.stack([gate, up], axis=-1), PAIRED_DTYPE)


def split_pairs(pairs: jax.Array) -> jax.Array:
    """int16 pairs [..., F] -> int8 [..., F, 2]: gate, up (a bitcast: no copy)."""
    return jax.lax.bitcast_convert_type(pairs, jnp.int8)


def pair_gate_up(layer: dict) -> dict:
    """A fused layer (jdlm.model.fuse_projections) whose gate_up [D, 2, F] is int8 with it replaced by gate_up_pairs
    [D, F] int16 (`pair_bytes` of gate and up) and gate_up_scale [2, F] renamed gate_up_pairs_scale: the layout
    jdlm/kernels/int8_swiglu.py reads. Any other layer as it is. Works on arrays and on ShapeDtypeStructs."""
    if "gate_up" not in layer or layer["gate_up"].dtype != jnp.int8:
        return layer
    layer = dict(layer)
    stacked = layer.pop("gate_up")
    d, _, f = stacked.shape
    if isinstance(stacked, jax.ShapeDtypeStruct):
        layer["gate_up_pairs"] = jax.ShapeDtypeStruct((d, f), PAIRED_DTYPE)
    else:
        layer["gate_up_pairs"] = pair_bytes(stacked[:, 0], stacked[:, 1])
    layer[scale_name("gate_up_pairs")] = layer.pop(scale_name("gate_up"))
    return layer


def mode_of(weights) -> str | None:
    """The quantisation of a weights pytree (arrays or ShapeDtypeStructs), or None for float weights."""
    layer = weights["layers"][0] if weights["layers"] else {}
    weight = layer.get("q", layer.get("qkv"))  # qkv: a layer fused by jdlm.model.fuse_projections
    dtype = None if weight is None else jnp.dtype(weight.dtype)
    return next((mode for mode, (stored, _) in MODES.items() if stored == dtype), None)


@functools.partial(jax.jit, static_argnums=(1, 2))
def quantize_array(w: jax.Array, mode: str, input_axes: int) -> tuple[jax.Array, jax.Array]:
    """(w_q, scale): `w` [in..., out...] symmetrically quantised per output channel, computed in float32.

    w_q has w's shape in MODES[mode]'s dtype; scale [out...] float32 (1 for an all-zero channel). Round to
    nearest: |w - w_q * scale| <= scale / 2 for int8; for fp8 (3 mantissa bits) <= max(|w| / 16, scale / 1024),
    the second term for values in e4m3's subnormal range."""
    stored, top = MODES[mode]
    w32 = w.astype(jnp.float32)
    amax = jnp.max(jnp.abs(w32), axis=tuple(range(input_axes)))  # [out...]
    scale = jnp.where(amax > 0, amax / top, 1.0).astype(SCALE_DTYPE)
    scaled = w32 / scale
    if stored == jnp.int8:
        scaled = jnp.clip(jnp.round(scaled), -top, top)
    return scaled.astype(stored), scale


def dequantize_array(w_q: jax.Array, scale: jax.Array, dtype=jnp.float32) -> jax.Array:
    """w_q * scale in `dtype` (the scale broadcasts over the leading input axes)."""
    return (w_q.astype(jnp.float32) * scale).astype(dtype)


def linear_input_axes(layer: dict) -> dict[str, int]:
    """The quantisable weights of one layer's dict and their input axes: INPUT_AXES, or FUSED_INPUT_AXES for a
    fused layer (PAIRED_INPUT_AXES for a fused int8 one)."""
    if "gate_up_pairs" in layer:
        return PAIRED_INPUT_AXES
    return FUSED_INPUT_AXES if "qkv" in layer else INPUT_AXES


def quantize_weights(weights: dict, mode: str) -> dict:
    """A weights pytree with every layer's linear weights quantised and their scales added; other leaves as given.
    Each weight is quantised where it lives (its device or shards) and let go once replaced. A fused layer's int8
    gate_up becomes gate_up_pairs (`pair_gate_up`), as fusing int8 weights gives."""
    layers = []
    for layer in weights["layers"]:
        layer = dict(layer)
        for name, input_axes in linear_input_axes(layer).items():
            layer[name], layer[scale_name(name)] = quantize_array(layer[name], mode, input_axes)
        layers.append(pair_gate_up(layer))
    return {**weights, "layers": tuple(layers)}


def quantize_params(params, mode: str | None):
    """`params` with weight-only quantisation `mode` ("int8", "fp8"; None: unchanged). Params already quantised
    the same way are returned as they are; another mode is refused (quantise the float weights instead)."""
    if check_mode(mode) is None:
        return params
    current = mode_of(params.weights)
    if current == mode:
        return params
    if current is not None:
        raise QuantizationError(f"these weights are already quantised to {current}; load them without quantize= "
                                f"(or with quantize={current!r}), or quantise the original float weights to {mode}")
    return params.replace(weights=quantize_weights(params.weights, mode))


def quantized_shapes(weights: dict, mode: str) -> dict:
    """The ShapeDtypeStruct pytree of `quantize_weights(weights, mode)` for float `weights` (ShapeDtypeStructs)."""
    stored = MODES[mode][0]
    layers = []
    for layer in weights["layers"]:
        layer = dict(layer)
        for name, input_axes in linear_input_axes(layer).items():
            shape = layer[name].shape
            layer[name] = jax.ShapeDtypeStruct(shape, stored)
            layer[scale_name(name)] = jax.ShapeDtypeStruct(shape[input_axes:], SCALE_DTYPE)
        layers.append(pair_gate_up(layer))
    return {**weights, "layers": tuple(layers)}


def is_quantized_leaf(name: str, dtype) -> bool:
    """Whether a leaf (by its name and dtype) is a quantised weight or a scale: leaves a compute-dtype cast skips."""
    return name.endswith(SCALE_SUFFIX) or jnp.dtype(dtype) in {PAIRED_DTYPE, *(stored for stored, _ in MODES.values())}


def weight_bytes(weights) -> int:
    """Bytes of a weights pytree (arrays or ShapeDtypeStructs)."""
    return sum(int(np.prod(a.shape)) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(weights))


_HLO_DTYPES = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}
_PASS_THROUGH = ("parameter(", "get-tuple-element(", "tuple(", "bitcast(")


def dequantized_copies(hlo: str, params) -> dict[str, list[str]]:
    """Where a compiled program (`jax.jit(...).lower(...).compile().as_text()`) materialises a quantised weight in
    the compute dtype: {computation name: [instruction]} over the computations that are not fusion bodies (ENTRY,
    while bodies, ...), for arrays of a quantised weight's element count in the compute dtype.

    Empty when every int8/fp8 -> compute-dtype convert sits inside the fusion of its matmul (the weight is read in
    1 byte). An entry in ENTRY means the convert was hoisted out of the decode loop (a full-width copy, read at
    2 bytes a weight every step); an entry in a while body means it runs, unfused, every step."""
    dtype = _HLO_DTYPES.get(jnp.dtype(params.dtype).name, jnp.dtype(params.dtype).name)
    sizes = {int(np.prod(layer[name].shape)) * jnp.dtype(layer[name].dtype).itemsize  # int8 values (int16 pairs: 2)
             for layer in params.weights["layers"] for name in linear_input_axes(layer) if scale_name(name) in layer}
    fused = set(re.findall(r"fusion\(.*?calls=(%[\w.\-]+)", hlo))
    found: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        header = re.match(r"(?:ENTRY )?(%[\w.\-]+) .*\{$", line)
        if header:
            name = header.group(1) if not line.startswith("ENTRY") else "ENTRY"
            continue
        shape = re.match(rf"\s*(?:ROOT )?%[\w.\-]+ = {dtype}\[([\d,]+)\]", line)
        if name is None or name in fused or shape is None or any(op in line for op in _PASS_THROUGH):
            continue
        dims = [int(d) for d in shape.group(1).split(",")]
        if len(dims) >= 2 and int(np.prod(dims)) in sizes:
            found.setdefault(name, []).append(line.strip()[:160])
    return found

