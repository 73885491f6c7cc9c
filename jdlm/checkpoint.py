"""jdlm checkpoint directories: save atomically, load with clear errors.

Layout of a checkpoint directory:
  config.json      {"jdlm_config": ModelConfig fields}
  manifest.json    format version, dtype, parameter shapes, the size and sha256 of every other file (params/
                   included; checked on load), source file hashes (conversions), extra notes
  params/          orbax checkpoint of `Params.weights`
  tokenizer.json (+ tokenizer_config.json, chat_template.jinja, ...)   the model's own tokenizer files
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

import jax
import jax.numpy as jnp

from jdlm.config import ConfigError, load_config, read_config_json
from jdlm.errors import CheckpointError
from jdlm.model import Params, is_fused, param_shapes
from jdlm.quantize import INPUT_AXES, MODES, check_mode, is_quantized_leaf, mode_of, quantize_params

# The newest format this jdlm reads. 2: "files" and "bytes" cover params/ too (version 1 hashed the top-level files
# only); 3: quantised weights, recorded under "quantization". Float checkpoints are still written as version 2.
FORMAT_VERSION = 3
FLOAT_FORMAT_VERSION = 2
PACKAGED_MODELS = ("tiny", "tiny-ar")
_VERIFY_OFF = ("0", "false", "no", "off")


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: list[Path]) -> list[str]:
    """sha256 of each file, several at a time (hashlib releases the GIL: a large checkpoint's many params files
    hash at the disk's speed rather than one core's)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(sha256_file, paths))


def flat_shapes(weights) -> dict[str, list[int]]:
    """{"layers/0/q": [D, N, H], ...} for a weights pytree (arrays or ShapeDtypeStructs)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(weights)[0]:
        key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        out[key] = list(leaf.shape)
    return out


def is_checkpoint(directory: Path) -> bool:
    """True when `directory` holds a jdlm manifest.json (what `--overwrite` may replace)."""
    try:
        return "format_version" in json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_destination(dst: str | Path, overwrite: bool, source: str | Path | None = None) -> None:
    """Refuses a destination whose writing or replacing could destroy something the user did not ask to replace:
    the source (or a folder that contains it, or one inside it), the current or home folder or one above them,
    an existing path without `overwrite`, and anything but a jdlm checkpoint or an empty folder with it.
    Reads no weights."""
    target = Path(dst).expanduser().resolve()
    if source is not None:
        src = Path(source).expanduser().resolve()
        relation = ("is" if target == src else "contains" if target in src.parents
                    else "lies inside" if src in target.parents else None)
        if relation:
            raise CheckpointError(f"destination {dst} {relation} the source {source}; choose a destination folder "
                                  "apart from the source")
    for name, folder in (("current", Path.cwd()), ("home", Path(os.path.expanduser("~")))):
        folder = folder.resolve()
        if target == folder or target in folder.parents:
            raise CheckpointError(f"destination {dst} is the {name} folder or contains it; name a new folder for "
                                  "the checkpoint, e.g. {}".format(Path(dst) / "my-model"))
    if not os.path.lexists(target):
        return
    if not overwrite:
        raise CheckpointError(f"{dst} already exists; choose another destination or pass --overwrite to replace it")
    if not is_checkpoint(target) and not (target.is_dir() and not any(target.iterdir())):  # empty: nothing lost
        raise CheckpointError(f"{dst} exists and is not a jdlm checkpoint (it has no jdlm manifest.json); "
                              "--overwrite replaces only jdlm checkpoints: remove it yourself or choose another "
                              "destination")


def _owner_tag() -> str:
    return f"{os.getpid()}-{socket.gethostname()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(dst: Path) -> None:
    """Removes `.DST.tmp-*` / `.DST.old-*` folders left by dead processes of this host (a crash or SIGKILL
    mid-write); folders of live processes and of other hosts are left alone."""
    pattern = re.compile(rf"\.{re.escape(dst.name)}\.(?:tmp-(\d+)-(.+)-[0-9a-f]+|old-(\d+)-(.+))")
    host = socket.gethostname()
    for path in dst.parent.iterdir() if dst.parent.is_dir() else ():
        match = pattern.fullmatch(path.name)
        if not match:
            continue
        pid, owner_host = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
        if owner_host == host and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _user_os_error(err: OSError, dst: Path) -> CheckpointError:
    """A failure while writing `dst` as one line that says what to change."""
    where = dst.parent.resolve()
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointError(f"no space left on the disk of {where} while writing {dst.name}; free some space or "
                               "choose a destination on another disk")
    writing = err.filename is None or str(Path(err.filename).resolve()).startswith(str(where))
    if err.errno == errno.EROFS or (err.errno in (errno.EACCES, errno.EPERM) and writing):
        return CheckpointError(f"cannot write to {where} ({os.strerror(err.errno)}); choose a destination folder "
                               "you can write to")
    return CheckpointError(f"{err.strerror or err}: {err.filename or dst} (while writing {dst}); check that path")


def _set_handler(signum: int, handler) -> object:
    """`signal.signal`, restoring SIG_DFL where the previous handler was not Python's (`signal` gives None)."""
    return signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _terminate_as_interrupt(signum, frame):
    raise KeyboardInterrupt


class AtomicDirectory:
    """Writes into a temporary sibling directory and renames it into place only on success.

    An interrupted write (exception, Ctrl-C, SIGTERM) leaves nothing behind; after a crash or SIGKILL the
    `.DST.tmp-PID-HOST-*` directory is removed by the next write to the same destination. The result gets the
    permissions the umask gives a new folder. Write failures (disk full, read-only) are `CheckpointError`s.
    """

    def __init__(self, dst: str | Path, overwrite: bool = False):
        self.dst = Path(dst).expanduser()
        if self.dst.is_symlink():  # replace the checkpoint the link points to, not the link
            self.dst = self.dst.resolve()
        check_destination(self.dst, overwrite)
        remove_stale_temporaries(self.dst)
        try:
            self.dst.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = self.dst.with_name(f".{self.dst.name}.tmp-{_owner_tag()}-{secrets.token_hex(4)}")
            self.tmp.mkdir()  # mode 0o777 less the umask, unlike mkdtemp's 0o700
        except OSError as e:
            raise _user_os_error(e, self.dst) from None
        self._on_main_thread = threading.current_thread() is threading.main_thread()  # where signals are handled

    def __enter__(self) -> Path:
        if self._on_main_thread:  # a kill should clean up too, like Ctrl-C
            self._old_sigterm = _set_handler(signal.SIGTERM, _terminate_as_interrupt)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if self._on_main_thread:
            _set_handler(signal.SIGTERM, self._old_sigterm)
        if exc_type is None:
            try:
                self._commit()
                return False
            except OSError as e:
                exc_type, exc = type(e), e
        shutil.rmtree(self.tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _user_os_error(exc, self.dst) from None
        return False

    def _commit(self) -> None:
        mode = self.tmp.stat().st_mode & 0o7777  # what the umask gave the new folder
        for folder in (p for p in self.tmp.rglob("*") if p.is_dir()):
            os.chmod(folder, mode)  # orbax's folders too
        if os.path.lexists(self.dst):
            old = self.dst.with_name(f".{self.dst.name}.old-{_owner_tag()}")
            os.rename(self.dst, old)
            os.rename(self.tmp, self.dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, self.dst)


def to_host(array) -> jax.Array:
    """A numpy or device array as a jax array in host (CPU) memory."""
    return jax.device_put(array, jax.devices("cpu")[0])


@contextmanager
def _signals_held():
    """Holds Ctrl-C and SIGTERM while orbax writes: interrupting the main thread leaves orbax's writer threads
    recreating files in a folder already removed. A held signal is raised as KeyboardInterrupt once the write has
    returned; a second one interrupts at once (the next write to that destination removes what is left)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def hold(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        print("stopping once the files in flight are written (press Ctrl-C again to stop at once) ...",
              file=sys.stderr)

    previous = {s: _set_handler(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            _set_handler(s, handler)
    if received:
        raise KeyboardInterrupt


@contextmanager
def _quiet_absl():
    """Silences the tracebacks orbax's writer threads log (a full disk printed some 200 lines) while it writes:
    the same error reaches the caller, who reports it in one line."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def write_params(directory: Path, weights) -> None:
    """Saves a weights pytree as an orbax checkpoint in `directory/params`.

    The arrays go to host memory first and orbax writes them a few at a time (at most 1 GB in flight), so saving
    adds little to the memory the weights already take (orbax's defaults stage a full second copy).
    """
    try:
        with _signals_held(), _quiet_absl():  # the import too: a signal inside orbax's imports is mishandled
            import orbax.checkpoint as ocp

            handler = ocp.PyTreeCheckpointHandler(save_concurrent_gb=1, save_device_host_concurrent_gb=1)
            with ocp.Checkpointer(handler) as ckptr:
                ckptr.save(directory.resolve() / "params", args=ocp.args.PyTreeSave(jax.tree.map(to_host, weights)))
    except ValueError as e:  # tensorstore reports OS errors (disk full, ...) as ValueError("... [os_error_code='28']")
        code = re.search(r"os_error_code='(\d+)'", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from None


def save(dst: str | Path, params: Params, *, tokenizer_files: Iterable[Path] = (), manifest: dict | None = None,
         overwrite: bool = False) -> Path:
    """Saves `params` (and copies `tokenizer_files`) as a jdlm checkpoint directory, atomically.

    `overwrite` replaces an existing jdlm checkpoint only (see `check_destination`)."""
    if is_fused(params):
        raise CheckpointError("these params have fused projections (jdlm.model.fuse_projections), a layout for "
                              "running the model only; save the params as loaded (before fusing)")
    with AtomicDirectory(dst, overwrite) as tmp:
        params.config.save(tmp / "config.json")
        write_params(tmp, params.weights)
        for f in tokenizer_files:
            shutil.copy2(f, tmp / Path(f).name)
        write_manifest(tmp, params.dtype, params.weights, manifest or {})
    return Path(dst)


def file_table(directory: Path) -> tuple[dict[str, str], dict[str, int]]:
    """`({relative path: sha256}, {relative path: bytes})` of every file under `directory` (params/ included)
    but its manifest.json."""
    paths = sorted(p for p in directory.rglob("*") if p.is_file() and p != directory / "manifest.json")
    names = [p.relative_to(directory).as_posix() for p in paths]
    return dict(zip(names, sha256_files(paths))), {n: p.stat().st_size for n, p in zip(names, paths)}


def write_manifest(directory: Path, dtype, weights, extra: dict) -> None:
    """manifest.json for the files under `directory`; `dtype` is the compute dtype (the embedding table's), and
    quantised weights (jdlm/quantize.py) are recorded under "quantization" (format version 3: older jdlm refuses
    them by version instead of misreading them)."""
    digests, sizes = file_table(directory)
    mode = mode_of(weights)
    manifest = {"format_version": FLOAT_FORMAT_VERSION if mode is None else FORMAT_VERSION,
                "dtype": jnp.dtype(dtype).name, "params": flat_shapes(weights), "files": digests, "bytes": sizes}
    if mode is not None:
        manifest["quantization"] = {"mode": mode, "dtype": MODES[mode][0].name, "weights": list(INPUT_AXES),
                                    "scales": "symmetric, one float32 scale per output channel"}
    manifest.update(extra)
    _write_manifest_json(directory, manifest)


def refresh_file_table(directory: Path) -> None:
    """Rewrites the "files" and "bytes" of `directory`'s manifest.json for the files there now (e.g. after a sampler
    head was added beside the weights: jdlm/models/tiny/sampler_head), keeping the rest. Written atomically."""
    manifest = read_manifest(directory)
    manifest["files"], manifest["bytes"] = file_table(directory)
    _write_manifest_json(directory, manifest)


def _write_manifest_json(directory: Path, manifest: dict) -> None:
    """manifest.json, written atomically (a reader never sees half of it)."""
    from jdlm.files import write_atomically

    text = json.dumps(manifest, indent=2) + "\n"
    write_atomically(directory / "manifest.json", lambda tmp: tmp.write_text(text))


def read_manifest(directory: Path) -> dict:
    """manifest.json of a jdlm checkpoint, checked enough to be used."""
    path = directory / "manifest.json"
    fix = "convert or save the checkpoint again"
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        jnp.dtype(manifest["dtype"])
        if not isinstance(manifest.get("files", {}), dict) or not isinstance(manifest.get("bytes", {}), dict):
            raise ValueError("'files' and 'bytes' must be objects")
        if "quantization" in manifest and not isinstance(manifest["quantization"], dict):
            raise ValueError("'quantization' must be an object")
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is corrupt ({type(e).__name__}: {e}); {fix}") from None
    version = manifest.get("format_version", 1)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {manifest['format_version']}, newer than this jdlm reads "
                              f"({FORMAT_VERSION}); upgrade jdlm")
    mode = stored_quantization(manifest)
    if "quantization" in manifest and mode not in MODES:
        raise CheckpointError(f"{path} records weight quantisation {mode!r}, which this jdlm does not know (it "
                              f"reads {', '.join(MODES)}); upgrade jdlm")
    return manifest


def stored_quantization(manifest: dict) -> str | None:
    """The weight quantisation a checkpoint's manifest records ("int8", "fp8"), or None for float weights."""
    return manifest.get("quantization", {}).get("mode")


def verify_files(directory: Path, manifest: dict, *, hashes: bool) -> None:
    """Checks the files manifest.json records: each present, of its recorded size, and (`hashes`) of its sha256.

    Without `hashes` only params/ is checked, by size (a stat per file): config and tokenizer files may then be
    edited on purpose. Hashing reads every byte (0.3 to 2 GB/s per core, a few cores at a time)."""
    recorded = manifest.get("files", {})
    names = list(recorded) if hashes else [n for n in recorded if n.startswith("params/")]
    sizes = manifest.get("bytes", {})

    def fix(name):
        if name.startswith("params/"):
            return "the checkpoint is damaged: convert or save it again"
        return ("the file was edited or damaged: convert or save the checkpoint again, or set JDLM_VERIFY=0 to load "
                "it as it is")

    for name in names:
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; {fix(name)}")
        if name in sizes and path.stat().st_size != sizes[name]:
            raise CheckpointError(f"{path} has {path.stat().st_size} bytes where manifest.json records "
                                  f"{sizes[name]}; {fix(name)}")
    if hashes:
        for name, actual in zip(names, sha256_files([directory / n for n in names])):
            if actual != recorded[name]:
                raise CheckpointError(f"{directory / name} does not match its sha256 in manifest.json; {fix(name)}")


def verify_by_default() -> bool:
    """Whether loading hashes every file: yes unless the environment sets JDLM_VERIFY=0."""
    return os.environ.get("JDLM_VERIFY", "1").strip().lower() not in _VERIFY_OFF


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


def load_params(path: str | Path, dtype=None, *, verify: bool | None = None, mesh=None,
                quantize: str | None = None) -> Params:
    """Restores the weights of a jdlm checkpoint directory (no tokenizer).

    Every file that manifest.json records (params/ and config.json included) must have its recorded size; with
    `verify` its sha256 is checked too, so a damaged or edited file is a `CheckpointError` naming it.

    Args:
      path: a checkpoint directory or a packaged model name.
      dtype: cast the weights to this dtype (default: as stored).
      verify: hash every file (seconds per GB); default True unless the environment sets JDLM_VERIFY=0, the
        opt-out for very large models on trusted disks.
      mesh: a `jax.sharding.Mesh` (`jdlm.sharding.make_mesh`): restore every weight straight into its shards by
        the partition rules of `jdlm.sharding` (each device, and each host, reads only its part).
      quantize: "int8" or "fp8": quantise the linear weights once loaded (jdlm/quantize.py); a checkpoint stored
        quantised (`jdlm convert --quantize`) loads quantised without it. `dtype` casts the rest.
    """
    check_mode(quantize)
    directory = resolve(path)
    config_path = directory / "config.json"
    manifest_path = directory / "manifest.json"
    if not config_path.exists():
        raise CheckpointError(f"{directory} has no config.json; is it a jdlm checkpoint?")
    try:
        raw_config = read_config_json(config_path)
        if "jdlm_config" not in raw_config:
            raise CheckpointError(f"{directory} is a Hugging Face checkpoint, not a jdlm one; convert it first: "
                                  f"jdlm convert llada|dream {directory} DST")
        if not manifest_path.exists() or not (directory / "params").is_dir():
            raise CheckpointError(f"{directory} is incomplete (manifest.json or params/ missing); convert or save "
                                  "it again")
        config = load_config(config_path)
    except ConfigError as e:
        raise CheckpointError(f"{e}; convert or save the checkpoint again") from None
    manifest = read_manifest(directory)
    stored = jnp.dtype(manifest["dtype"])
    stored_mode = check_mode(stored_quantization(manifest))
    if quantize is not None and stored_mode not in (None, quantize):
        raise CheckpointError(f"{directory} stores {stored_mode} weights; load it without quantize= (or with "
                              f"quantize={stored_mode!r}), or convert the float weights with --quantize {quantize}")
    abstract = param_shapes(config, stored, quantize=stored_mode).weights
    expected = flat_shapes(abstract)
    if manifest.get("params") and manifest["params"] != expected:
        bad = sorted(k for k in set(expected) | set(manifest["params"])
                     if expected.get(k) != manifest["params"].get(k))
        raise CheckpointError(f"{directory}: parameter shapes in manifest.json do not match config.json "
                              f"(first mismatches: {bad[:3]}); the checkpoint is inconsistent")
    verify_files(directory, manifest, hashes=verify_by_default() if verify is None else verify)
    # Target shardings in the abstract tree, always: without them orbax restores onto the devices the checkpoint
    # was saved from, and refuses ("topology mismatch") a checkpoint written on another machine's devices.
    if mesh is not None:
        from jdlm.sharding import param_shardings

        shardings = param_shardings(config, mesh, quantize=stored_mode)
    else:
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    import orbax.checkpoint as ocp

    try:
        with ocp.StandardCheckpointer() as ckptr:
            weights = ckptr.restore((directory / "params").resolve(), abstract)
    except Exception as e:  # orbax raises many types; all mean the same thing to the user
        raise CheckpointError(f"{directory}/params could not be restored ({type(e).__name__}: {e}); the checkpoint "
                              "is corrupt or does not match its config.json") from None
    target = jnp.dtype(dtype) if dtype is not None else stored
    weights = jax.tree_util.tree_map_with_path(
        lambda p, a: a if is_quantized_leaf(str(getattr(p[-1], "key", "")), a.dtype) else jnp.asarray(a, target),
        weights)
    params = quantize_params(Params(config=config, weights=weights), quantize)
    if mesh is not None and quantize is not None and stored_mode is None:  # the scales' layout, as the rules say
        from jdlm.sharding import param_shardings

        params = params.replace(weights=jax.device_put(params.weights,
                                                       param_shardings(config, mesh, quantize=quantize)))
    return params


def checkpoint_shapes(path: str | Path, dtype=None, *, quantize: str | None = None) -> Params:
    """What `load_params(path, dtype, quantize=quantize)` returns, as shapes (`jax.ShapeDtypeStruct` leaves), from
    config.json and manifest.json alone: no weight is read (for `jdlm.decoding.prefetch`, which finds the decode's
    stored programs while the weights load). A CheckpointError for a missing or unreadable config or manifest;
    the rest of `load_params`'s checks (a Hugging Face checkpoint, a quantisation other than the stored one) are
    left to it."""
    check_mode(quantize)
    directory = resolve(path)
    config = _read_config(directory)
    manifest = read_manifest(directory)
    stored = jnp.dtype(manifest["dtype"])
    mode = check_mode(stored_quantization(manifest)) or quantize
    return param_shapes(config, jnp.dtype(dtype) if dtype is not None else stored, quantize=mode)


def load_tokenizer(path: str | Path):
    """The tokenizer of a jdlm checkpoint (what `load` returns beside the params)."""
    from jdlm.tokenizer import Tokenizer

    directory = resolve(path)
    return Tokenizer.from_dir(directory, _read_config(directory))


def _read_config(directory: Path):
    try:
        return load_config(directory / "config.json")
    except (ConfigError, OSError) as e:
        raise CheckpointError(f"{directory}: {e}") from None


def load(path: str | Path, dtype=None, *, verify: bool | None = None, mesh=None, quantize: str | None = None):
    """Loads a jdlm checkpoint: `(params, tokenizer)`.

    Args:
      path: a directory written by `jdlm convert` / the training scripts, or "tiny" / "tiny-ar" (shipped with jdlm).
      dtype: cast the weights (e.g. jnp.float32 on CPU); default as stored.
      verify: check every file's sha256 against manifest.json (sizes are always checked); default True unless
        the environment sets JDLM_VERIFY=0. Pass False (or set JDLM_VERIFY=0) to skip the hashing (seconds per
        GB) for very large models.
      mesh: restore the weights sharded over this mesh (`jdlm.sharding`); default one device.
      quantize: "int8" or "fp8" weight-only quantisation of the linear weights, for faster memory-bound decoding
        (docs/quantization.md); None (default) keeps them as stored. A checkpoint converted with --quantize is
        quantised already.
    """
    from jdlm.tokenizer import Tokenizer

    params = load_params(path, dtype, verify=verify, mesh=mesh, quantize=quantize)
    tokenizer = Tokenizer.from_dir(resolve(path), params.config)
    return params, tokenizer
