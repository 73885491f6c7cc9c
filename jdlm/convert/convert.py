"""Streams a Hugging Face safetensors checkpoint into a jdlm checkpoint directory."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jdlm.convert.names import IGNORED_SUFFIXES, LAYOUTS, entries as expected_entries
from jdlm.convert.safetensors_io import SafetensorsCheckpoint
from jdlm.checkpoint import AtomicDirectory, CheckpointError, sha256_file, to_host, write_manifest, write_params
from jdlm.config import ConfigError, from_hf
from jdlm.tokenizer import TOKENIZER_FILES
from jdlm.errors import ConversionError, SourceCheckpointError

DTYPES = {"bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16, "float32": jnp.float32, "fp32": jnp.float32,
          "float16": jnp.float16, "fp16": jnp.float16}



def _set(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _source_dtype(ckpt: SafetensorsCheckpoint, names: list[str]) -> np.dtype:
    dtypes = {ckpt.dtype(n) for n in names}
    if len(dtypes) != 1:
        raise ConversionError(f"{ckpt.directory}: mixed tensor dtypes {sorted(map(str, dtypes))}; pass --dtype")
    return dtypes.pop()


def convert_checkpoint(family: str, src: str | Path, dst: str | Path, *, dtype: str | None = None,
                       overwrite: bool = False, progress: bool = False) -> Path:
    """Converts the Hugging Face checkpoint directory `src` into the jdlm checkpoint directory `dst`.

    Every source tensor is read once (memory-mapped), transposed into jdlm's layout, cast when `dtype` is given,
    and checked against the shape the config implies. Peak host memory is the converted output plus orbax's write
    buffer (at most 1 GB in flight) and a few copies of the current tensor; tests/test_convert.py checks it.
    The result is written to a temporary directory and renamed into place at the end.

    Args:
      family: "llada" or "dream"; must agree with config.json's model_type.
      src: directory with config.json, safetensors weights and tokenizer files.
      dst: the jdlm checkpoint directory to create.
      dtype: "bfloat16" / "float32" / "float16"; default: keep the source dtype.
      overwrite: replace an existing `dst`.
      progress: show a progress bar.
    """
    src = Path(src)
    if family not in LAYOUTS:
        raise ConversionError(f"unknown model family {family!r}; choose one of {sorted(LAYOUTS)}")
    if not src.is_dir():
        raise ConversionError(f"{src} is not a directory; give the Hugging Face checkpoint directory")
    config_path = src / "config.json"
    if not config_path.exists():
        raise ConversionError(f"{src} has no config.json; is it a Hugging Face checkpoint directory?")
    try:
        hf = json.loads(config_path.read_text())
        config = from_hf(hf, str(config_path))
    except (ConfigError, json.JSONDecodeError) as e:
        raise ConversionError(str(e)) from None
    if config.family != family:
        raise ConversionError(f"{config_path} describes a {config.family!r} model (model_type "
                              f"{hf.get('model_type')!r}), but '{family}' was requested; use "
                              f"`convert {config.family} ...`")
    if not (src / "tokenizer.json").exists():
        raise ConversionError(f"{src} has no tokenizer.json; copy the model's tokenizer files next to its weights")
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"unknown --dtype {dtype!r}; choose one of {sorted(DTYPES)}")
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
    source_dtype = _source_dtype(ckpt, [e.source for e in entries])
    target = np.dtype(DTYPES[dtype]) if dtype else source_dtype

    weights: dict = {}
    bar = _progress(progress, len(entries))
    try:
        for e in entries:  # one source tensor in memory at a time, besides the converted ones
            _set(weights, e.target, to_host(np.asarray(e.transform(ckpt.get(e.source))).astype(target)))
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
                "source_dtype": str(source_dtype),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            })
    except CheckpointError as err:
        raise ConversionError(str(err)) from None
    return Path(dst)


class _NoBar:
    def advance(self):
        pass

    def close(self):
        pass


class _RichBar:
    def __init__(self, total: int):
        from rich.progress import Progress

        self._p = Progress(transient=False)
        self._p.start()
        self._task = self._p.add_task("converting tensors", total=total)

    def advance(self):
        self._p.advance(self._task)

    def close(self):
        self._p.stop()


def _progress(enabled: bool, total: int):
    return _RichBar(total) if enabled else _NoBar()
