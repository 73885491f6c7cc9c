"""jdlm checkpoint directories: save atomically, load with clear errors.

Layout of a checkpoint directory:
  config.json      {"jdlm_config": ModelConfig fields}
  manifest.json    format version, dtype, parameter shapes, source file hashes (conversions), extra notes
  params/          orbax checkpoint of `Params.weights`
  tokenizer.json (+ tokenizer_config.json, chat_template.jinja, ...)   the model's own tokenizer files
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import jax
import jax.numpy as jnp

from jdlm.config import ConfigError, load_config
from jdlm.model import Params, param_shapes
from jdlm.errors import CheckpointError

FORMAT_VERSION = 1
PACKAGED_MODELS = ("tiny", "tiny-ar")



def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def flat_shapes(weights) -> dict[str, list[int]]:
    """{"layers/0/q": [D, N, H], ...} for a weights pytree (arrays or ShapeDtypeStructs)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(weights)[0]:
        key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        out[key] = list(leaf.shape)
    return out


class AtomicDirectory:
    """Writes into a temporary sibling directory and renames it into place only on success.

    An interrupted write leaves at most a `.DST.tmp-*` directory, never something that looks finished.
    """

    def __init__(self, dst: str | Path, overwrite: bool = False):
        self.dst = Path(dst)
        if self.dst.exists() and not overwrite:
            raise CheckpointError(f"{self.dst} already exists; choose another destination or pass --overwrite")
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dst.name}.tmp-", dir=self.dst.parent))

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.dst.exists():
            old = self.dst.with_name(f".{self.dst.name}.old-{os.getpid()}")
            os.rename(self.dst, old)
            os.rename(self.tmp, self.dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, self.dst)
        return False


def to_host(array) -> jax.Array:
    """A numpy or device array as a jax array in host (CPU) memory."""
    return jax.device_put(array, jax.devices("cpu")[0])


def write_params(directory: Path, weights) -> None:
    """Saves a weights pytree as an orbax checkpoint in `directory/params`.

    The arrays go to host memory first and orbax writes them a few at a time (at most 1 GB in flight), so saving
    adds little to the memory the weights already take (orbax's defaults stage a full second copy).
    """
    import orbax.checkpoint as ocp

    handler = ocp.PyTreeCheckpointHandler(save_concurrent_gb=1, save_device_host_concurrent_gb=1)
    with ocp.Checkpointer(handler) as ckptr:
        ckptr.save(directory.resolve() / "params", args=ocp.args.PyTreeSave(jax.tree.map(to_host, weights)))


def save(dst: str | Path, params: Params, *, tokenizer_files: Iterable[Path] = (), manifest: dict | None = None,
         overwrite: bool = False) -> Path:
    """Saves `params` (and copies `tokenizer_files`) as a jdlm checkpoint directory, atomically."""
    with AtomicDirectory(dst, overwrite) as tmp:
        params.config.save(tmp / "config.json")
        write_params(tmp, params.weights)
        for f in tokenizer_files:
            shutil.copy2(f, tmp / Path(f).name)
        write_manifest(tmp, params.dtype, params.weights, manifest or {})
    return Path(dst)


def write_manifest(directory: Path, dtype, weights, extra: dict) -> None:
    manifest = {"format_version": FORMAT_VERSION, "dtype": jnp.dtype(dtype).name, "params": flat_shapes(weights),
                "files": {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()}}
    manifest.update(extra)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def packaged_model_dir(name: str) -> Path:
    return Path(__file__).parent / "models" / name


def resolve(path: str | Path) -> Path:
    """A checkpoint directory from a path or the name of a model shipped with jdlm ("tiny", "tiny-ar")."""
    if str(path) in PACKAGED_MODELS:
        directory = packaged_model_dir(str(path))
        if not (directory / "config.json").exists():
            raise CheckpointError(f"the packaged model {path!r} is not installed at {directory}; reinstall jdlm")
        return directory
    directory = Path(path).expanduser()
    if not directory.exists():
        raise CheckpointError(f"{directory} does not exist; give a jdlm checkpoint directory or one of "
                              f"{PACKAGED_MODELS}")
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is a file; give a jdlm checkpoint directory")
    return directory


def load_params(path: str | Path, dtype=None, mesh=None) -> Params:
    """Restores the weights of a jdlm checkpoint directory (no tokenizer).

    Args:
      path: a checkpoint directory or a packaged model name.
      dtype: cast the weights to this dtype (default: as stored).
      mesh: a `jax.sharding.Mesh` (`jdlm.sharding.make_mesh`): restore every weight straight into its shards by
        the partition rules of `jdlm.sharding` (each device, and each host, reads only its part).
    """
    directory = resolve(path)
    config_path = directory / "config.json"
    manifest_path = directory / "manifest.json"
    if not config_path.exists():
        raise CheckpointError(f"{directory} has no config.json; is it a jdlm checkpoint?")
    if "jdlm_config" not in json.loads(config_path.read_text()):
        raise CheckpointError(f"{directory} is a Hugging Face checkpoint, not a jdlm one; convert it first: "
                              f"jdlm convert llada|dream {directory} DST")
    if not manifest_path.exists() or not (directory / "params").is_dir():
        raise CheckpointError(f"{directory} is incomplete (manifest.json or params/ missing); convert or save it "
                              "again")
    try:
        config = load_config(config_path)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    manifest = json.loads(manifest_path.read_text())
    stored = jnp.dtype(manifest["dtype"])
    abstract = param_shapes(config, stored).weights
    expected = flat_shapes(abstract)
    if manifest.get("params") and manifest["params"] != expected:
        bad = sorted(k for k in set(expected) | set(manifest["params"])
                     if expected.get(k) != manifest["params"].get(k))
        raise CheckpointError(f"{directory}: parameter shapes in manifest.json do not match config.json "
                              f"(first mismatches: {bad[:3]}); the checkpoint is inconsistent")
    if mesh is not None:  # orbax's sharded restore: target shardings in the abstract tree
        from jdlm.sharding import param_shardings

        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                param_shardings(config, mesh))
    import orbax.checkpoint as ocp

    try:
        with ocp.StandardCheckpointer() as ckptr:
            weights = ckptr.restore((directory / "params").resolve(), abstract)
    except Exception as e:  # orbax raises many types; all mean the same thing to the user
        raise CheckpointError(f"{directory}/params could not be restored ({type(e).__name__}: {e}); the checkpoint "
                              "is corrupt or does not match its config.json") from None
    target = jnp.dtype(dtype) if dtype is not None else stored
    weights = jax.tree.map(lambda a: jnp.asarray(a, dtype=target), weights)
    return Params(config=config, weights=weights)


def load(path: str | Path, dtype=None, mesh=None):
    """Loads a jdlm checkpoint: `(params, tokenizer)`.

    Args:
      path: a directory written by `jdlm convert` / the training scripts, or "tiny" / "tiny-ar" (shipped with jdlm).
      dtype: cast the weights (e.g. jnp.float32 on CPU); default as stored.
      mesh: restore the weights sharded over this mesh (`jdlm.sharding`); default one device.
    """
    from jdlm.tokenizer import Tokenizer

    params = load_params(path, dtype, mesh)
    tokenizer = Tokenizer.from_dir(resolve(path), params.config)
    return params, tokenizer
