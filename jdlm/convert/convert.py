"""Streams a Hugging Face safetensors checkpoint into a jdlm checkpoint directory."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jdlm.convert.names import IGNORED_SUFFIXES, LAYOUTS, entries as expected_entries
from jdlm.convert.safetensors_io import SafetensorsCheckpoint
from jdlm.checkpoint import (AtomicDirectory, CheckpointError, check_destination, sha256_file, to_host,
                             write_manifest, write_params)
from jdlm.config import ConfigError, from_hf, read_config_json
from jdlm.tokenizer import TOKENIZER_FILES
from jdlm.errors import ConversionError, SourceCheckpointError
from jdlm.quantize import INPUT_AXES, MODES, quantize_array, scale_name

DTYPES = {"bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16, "float32": jnp.float32, "fp32": jnp.float32,
          "float16": jnp.float16, "fp16": jnp.float16}


def _set(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _target_dtype(ckpt: SafetensorsCheckpoint, names: list[str], dtype: str | None) -> tuple[np.dtype, str]:
    """The dtype to store (`dtype` when given, else the source's) and the source dtype(s), for the manifest.

    Without `dtype`, a source that mixes dtypes is stored as float32, which holds bfloat16, float16 and float32
    values exactly; float64 is stored as float32 too (the widest jdlm computes in). Either case is noted on
    stderr. Integer (quantized) weights are refused by name."""
    dtypes = {}
    for name in names:
        dt = ckpt.dtype(name)
        if not jnp.issubdtype(dt, jnp.floating):
            raise ConversionError(f"{ckpt.directory}: tensor {name} is {dt}, but weights must be floating point "
                                  "(bfloat16, float16 or float32); a quantized checkpoint cannot be converted: "
                                  "use the original floating-point weights")
        dtypes[str(dt)] = dt
    source = ", ".join(sorted(dtypes))
    if dtype is not None:
        return np.dtype(DTYPES[dtype]), source
    if len(dtypes) == 1 and source != "float64":
        return next(iter(dtypes.values())), source
    reason = f"mixes tensor dtypes ({source})" if len(dtypes) > 1 else "holds float64 tensors"
    print(f"note: {ckpt.directory} {reason}; storing every tensor as float32 (pass --dtype to choose another)",
          file=sys.stderr)
    return np.dtype(np.float32), source


def _all_finite(a: np.ndarray, chunk: int = 1 << 24) -> bool:
    """No NaN or inf in `a`, checked a slice at a time (a whole-tensor mask would cost a byte per element)."""
    flat = a.reshape(-1)
    return all(np.isfinite(flat[i:i + chunk]).all() for i in range(0, flat.size, chunk))


def _convert_tensor(e, ckpt: SafetensorsCheckpoint, target: np.dtype) -> np.ndarray:
    """One source tensor in jdlm's layout and `target` dtype; NaN or inf is refused by name."""
    source = ckpt.get(e.source)
    with np.errstate(over="ignore"):  # an overflow is reported below, by name
        converted = np.asarray(e.transform(source)).astype(target)
    if _all_finite(converted):
        return converted
    if _all_finite(source):
        raise ConversionError(f"{ckpt.directory}: tensor {e.source} has values beyond the range of {target} (they "
                              "become inf); convert with --dtype bfloat16 or --dtype float32")
    raise ConversionError(f"{ckpt.directory}: tensor {e.source} holds NaN or inf values; the source checkpoint is "
                          "damaged: download it again")


def convert_checkpoint(family: str, src: str | Path, dst: str | Path, *, dtype: str | None = None,
                       quantize: str | None = None, overwrite: bool = False, progress: bool = False) -> Path:
    """Converts the Hugging Face checkpoint directory `src` into the jdlm checkpoint directory `dst`.

    The destination is checked before anything is read: it may not be `src`, contain it or lie inside it, nor be
    the current or home folder; an existing one needs `overwrite` and must be a jdlm checkpoint.
    Every source tensor is read once (memory-mapped), transposed into jdlm's layout, cast when `dtype` is given,
    and checked against the shape the config implies and for NaN / inf. Peak host memory is the converted output
    plus orbax's write buffer (at most 1 GB in flight) and a few copies of the current tensor; tests/test_convert.py
    checks it. The result is written to a temporary directory and renamed into place at the end.

    Args:
      family: "llada", "dream" or "qwen2" (a causal Qwen2 / Qwen2.5, e.g. a guide for Dream); must agree with
        config.json's model_type.
      src: directory with config.json, safetensors weights and tokenizer files.
      dst: the jdlm checkpoint directory to create.
      dtype: "bfloat16" / "float32" / "float16"; default: keep the source dtype (float32 for mixed sources).
      quantize: "int8" or "fp8": store the linear weights quantised, with their scales (jdlm/quantize.py),
        computed from the weights cast to `dtype`, so the result equals `jdlm.load(float_checkpoint,
        quantize=...)`; the manifest records it and loading needs no option. Other weights stay in `dtype`.
      overwrite: replace `dst` if it is a jdlm checkpoint.
      progress: show a progress bar (on stderr).
    """
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if family not in LAYOUTS:
        raise ConversionError(f"unknown model family {family!r}; choose one of {sorted(LAYOUTS)}")
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"unknown --dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    if quantize is not None and quantize not in MODES:
        raise ConversionError(f"unknown --quantize {quantize!r}; choose one of {', '.join(MODES)}")
    try:
        check_destination(dst, overwrite, source=src)
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
    if not src.is_dir():
        raise ConversionError(f"{src} is not a directory; give the Hugging Face checkpoint directory")
    config_path = src / "config.json"
    if not config_path.exists():
        raise ConversionError(f"{src} has no config.json; is it a Hugging Face checkpoint directory?")
    try:
        hf = read_config_json(config_path)
        config = from_hf(hf, str(config_path))
    except ConfigError as e:
        raise ConversionError(str(e)) from None
    described = "qwen2" if config.causal and config.family == "dream" else config.family
    if described != family:
        raise ConversionError(f"{config_path} describes a {described!r} model (model_type "
                              f"{hf.get('model_type')!r}), but '{family}' was requested; use "
                              f"`convert {described} ...`")
    if not (src / "tokenizer.json").exists():
        raise ConversionError(f"{src} has no tokenizer.json; copy the model's tokenizer files next to its weights")
    try:
        ckpt = SafetensorsCheckpoint(src)
    except SourceCheckpointError as e:
        raise ConversionError(str(e)) from None

    entries = expected_entries(family, config)
    expected = {e.source for e in entries}
    available = set(ckpt.keys())
    missing = sorted(expected - available)
    if missing:
        raise ConversionError(f"{src}: tensor(s) {missing[:5]} are missing ({len(missing)} in all); the "
                              "checkpoint is incomplete or does not match its config.json")
    extra = sorted(n for n in available - expected if not n.endswith(IGNORED_SUFFIXES))
    if extra:
        raise ConversionError(f"{src}: unexpected tensor(s) {extra[:5]} ({len(extra)} in all) that a {family} "
                              f"model with {config.n_layers} layers does not have; is config.json the right one?")
    for e in entries:
        if ckpt.shape(e.source) != e.source_shape:
            raise ConversionError(f"{src}: tensor {e.source} has shape {list(ckpt.shape(e.source))}, but config.json "
                                  f"implies {list(e.source_shape)}")
    try:
        target, source_dtype = _target_dtype(ckpt, [e.source for e in entries], dtype)
    except SourceCheckpointError as err:
        raise ConversionError(str(err)) from None

    weights: dict = {}
    bar = _progress(progress, len(entries))
    try:
        for e in entries:  # one source tensor in memory at a time, besides the converted ones
            tensor = to_host(_convert_tensor(e, ckpt, target))
            name = e.target[-1]
            if quantize is not None and e.target[0] == "layers" and name in INPUT_AXES:
                tensor, scale = quantize_array(tensor, quantize, INPUT_AXES[name])
                _set(weights, (*e.target[:-1], scale_name(name)), scale)
            _set(weights, e.target, tensor)
            bar.advance()
    except SourceCheckpointError as err:
        raise ConversionError(str(err)) from None
    finally:
        bar.close()
    weights["layers"] = tuple(weights["layers"][i] for i in range(config.n_layers))

    sources = {p.name: sha256_file(p) for p in ckpt.source_files()}
    try:
        with AtomicDirectory(dst, overwrite) as tmp:
            config.save(tmp / "config.json")
            write_params(tmp, weights)
            for name in TOKENIZER_FILES:
                if (src / name).exists():
                    (tmp / name).write_bytes((src / name).read_bytes())
            write_manifest(tmp, target, weights, {
                "family": family, "source_dir": str(src.resolve()), "source_files": sources,
                "source_dtype": source_dtype,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            })
    except CheckpointError as err:
        raise ConversionError(str(err)) from None
    return dst


class _NoBar:
    def advance(self):
        pass

    def close(self):
        pass


class _RichBar:
    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import Progress

        self._p = Progress(console=Console(stderr=True), transient=False)  # stdout is for results only
        self._p.start()
        self._task = self._p.add_task("converting tensors", total=total)

    def advance(self):
        self._p.advance(self._task)

    def close(self):
        self._p.stop()


def _progress(enabled: bool, total: int):
    return _RichBar(total) if enabled else _NoBar()
