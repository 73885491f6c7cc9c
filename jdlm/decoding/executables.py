"""Compiled decodes kept on disk, so that a later process runs them without tracing, lowering or compiling.

JAX's persistent compilation cache skips only XLA's compile: a new process still traces the decode (a 32-layer
model, unrolled), lowers it to StableHLO and hashes that to find the cache entry, then loads the executable; at
LLaDA-8B shapes on a CPU tracing and lowering take about 1 s a program, finding and loading it about as much
(docs/performance.md, Start-up). When that cache is on
(`jax_compilation_cache_dir`, which the CLI sets), `call` also keeps each compiled entry point of the decode
serialized (`jax.experimental.serialize_executable`) in `<that dir>/jdlm-executables/`, under a key computed from
the arguments alone, with no tracing:

  the entry point's name; the arguments' tree structure, which holds the strategy's classes and static fields and
  the ModelConfig; every leaf's shape, dtype, weak type and device; the versions of jdlm (with a digest of its
  source files), jax, jaxlib and Python; the backend, its version and device kind; JAX's configuration (every
  `jax.config` value but logging, and its trace context), XLA_FLAGS, and the modes of jdlm's hand-written kernels
  (jdlm.kernels' quantized_linear and window_attention).

Knob values are leaves, not part of the key, so a sweep shares one stored program as it shares one compile.
Arguments that are not plain arrays on one device (tracers: `decode` inside a jit; a mesh), a tree node from
outside jdlm (its code is not in the digest) or a static field that prints an object address take the ordinary
`jax.jit` path, and so does any failure to read, load or first run a stored program: the entry point is then
compiled (from the persistent cache when it can be) and stored again. JDLM_EXECUTABLE_CACHE=0 turns the store off.

`prefetch` starts loading a stored program in a background thread from the arguments' shapes alone (before the
weights exist, say), and the program's first `call` then takes it from there (`jdlm.decoding.prefetch` for a
decode's programs; `jdlm generate` does it while its weights load).

Loading a stored program unpickles it: keep the cache directory as private as JAX's own cache, which also holds
executables.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import hashlib
import io
import os
import pickle
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jdlm.files import write_atomically
from jdlm.kernels import switch as kernel_switches

FORMAT = "jdlm-executable-1"  # bump when the stored layout or the key changes
SUBDIR = "jdlm-executables"
# What happened in this process: a program's first call "loaded" it from the store ("prefetched": loaded in the
# background by `prefetch`), or compiled it and "stored" it, or "failed" to read, load or run a stored one (and
# compiled it again), or was "unkeyed" (no key across processes: a tree node from outside jdlm, an object address,
# a JAX without the internals the key reads; compiled, not stored); "unsupported" counts the calls whose arguments
# take jax.jit's own path. Tests and scripts/bench_startup.py read these.
EVENTS: collections.Counter = collections.Counter()
# Seconds spent, reported through jax.monitoring beside JAX's own compile events (the CLI counts them as compile
# time): reading and loading a stored program (for a prefetched one, what its first call waited for it), and
# serializing and writing one. PREFETCH_EVENT: the seconds a background load (`prefetch`) took, mostly hidden
# behind the caller's own work, so not compile time.
LOAD_EVENT = "/jdlm/executables/load_duration"
STORE_EVENT = "/jdlm/executables/store_duration"
PREFETCH_EVENT = "/jdlm/executables/prefetch_duration"
_LOGGING = {"jax_log_compiles", "jax_logging_level", "jax_debug_log_modules", "jax_explain_cache_misses",
            "jax_pprint_use_color"}
_loaded: dict = {}  # (name, signature) -> jax.stages.Compiled, for the rest of the process
# (name, signature) -> (key material, Future of the stored program being loaded in the background by `prefetch`);
# the material says under which settings (kernel modes, jax config) it was looked up, as the signature does not
_pending: dict = {}


def call(name: str, jitted, *args):
    """`jitted(*args)`, from the store when it is on and holds this program (see the module docstring).

    Args:
      name: the entry point's name, unique among those passed here ("decode_loop", "advance", ...).
      jitted: the `jax.jit` function; `args` are its positional arguments (pytrees, no static arguments).
    """
    directory = store_directory()
    if directory is None:
        return jitted(*args)
    signature = _guarded(_signature, args)
    if signature is None:
        EVENTS["unsupported"] += 1
        return jitted(*args)
    compiled = _loaded.get((name, signature))
    if compiled is not None:
        return compiled(*args)
    return _first_call(name, jitted, args, signature, directory, _pending.pop((name, signature), None))


def prefetch(name: str, args) -> bool:
    """Starts loading the stored program that `call(name, jitted, *args)` would run, in a background thread, so that
    the loading overlaps whatever the caller does next (making or reading the weights); that `call` then waits for
    it instead of loading it itself. `args` may hold `jax.ShapeDtypeStruct`s placed on one device
    (`sharding=jax.sharding.SingleDeviceSharding(device)`) where the call will have arrays: the program is found by
    the arguments' shapes alone. Returns whether a stored program was found and its loading started (False with the
    store off, for arguments it does not take, or when nothing is stored under this key yet)."""
    directory = store_directory()
    signature = None if directory is None else _guarded(_signature, args)
    if signature is None or (name, signature) in _loaded or (name, signature) in _pending:
        return False
    material = _guarded(_key_material, name, signature)
    path = None if material is None else _path(directory, name, material)
    if path is None or not path.is_file():
        return False
    _pending[(name, signature)] = (material, _loader().submit(_timed_load, PREFETCH_EVENT, path, material,
                                                             signature[2]))
    return True


@functools.cache
def _loader() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="jdlm-executables")


def store_directory() -> Path | None:
    """Where programs are stored: `<jax_compilation_cache_dir>/jdlm-executables`, or None (off)."""
    base = jax.config.jax_compilation_cache_dir
    if not base or "://" in str(base) or os.environ.get("JDLM_EXECUTABLE_CACHE", "").strip().lower() in (
            "0", "off", "false", "no"):
        return None
    return Path(base) / SUBDIR


def clear() -> None:
    """Forgets the programs loaded in this process (the stored files stay); `jax.clear_caches()` does it too."""
    _loaded.clear()
    _pending.clear()


clear.cache_clear = clear  # jax.clear_caches() calls cache_clear() on every registered cache
try:
    from jax._src import util as _jax_util

    _jax_util.register_cache(clear, "jdlm stored executables")
except (ImportError, AttributeError):  # another jax: jax.clear_caches() leaves them, executables.clear() does not
    pass


# ---------------------------------------------------------------- the first call of a program in this process


def _first_call(name, jitted, args, signature, directory: Path, pending=None):
    """The program's first call in this process: loaded from the store (by `pending`, a `prefetch`'s (material,
    Future), when there is one made under the settings of this call), else compiled and stored."""
    device = signature[2]
    material = _guarded(_key_material, name, signature)
    if material is None:
        EVENTS["unkeyed"] += 1
    if pending is not None and pending[0] != material:  # a kernel mode or jax setting changed since `prefetch`
        pending = None
    path = None if material is None else _path(directory, name, material)
    if pending is not None or (path is not None and path.is_file()):
        try:
            compiled = _waited(pending[1]) if pending is not None else _timed_load(LOAD_EVENT, path, material, device)
            out = compiled(*args)
        except Exception:  # noqa: BLE001 (unreadable, stale layout, another jax: compile as if it were not there)
            EVENTS["failed"] += 1
        else:
            EVENTS["loaded"] += 1
            EVENTS["prefetched"] += pending is not None
            _loaded[(name, signature)] = compiled
            return out
    compiled = jitted.lower(*args).compile()  # the persistent cache still spares XLA's compile
    started = time.perf_counter()
    if path is not None and _store(path, material, compiled):
        EVENTS["stored"] += 1
        jax.monitoring.record_event_duration_secs(STORE_EVENT, time.perf_counter() - started)
    _loaded[(name, signature)] = compiled
    return compiled(*args)


def _guarded(function, *args):
    """function(*args), or None when it fails: the key leans on JAX internals (its trace context, its config
    table) that another JAX version may lack, and then the store is simply off."""
    try:
        return function(*args)
    except Exception:  # noqa: BLE001
        return None


def _path(directory: Path, name: str, material: str) -> Path:
    return directory / f"{name}-{hashlib.sha256(material.encode()).hexdigest()}.bin"


def _timed_load(event: str, path: Path, material: str, device):
    started = time.perf_counter()
    compiled = _load(path, material, device)
    jax.monitoring.record_event_duration_secs(event, time.perf_counter() - started)
    return compiled


def _waited(future: concurrent.futures.Future):
    """A prefetched program, reporting as LOAD_EVENT the seconds the call waited for it (not the whole load, most of
    which ran while the caller did other work)."""
    started = time.perf_counter()
    try:
        return future.result()
    finally:
        jax.monitoring.record_event_duration_secs(LOAD_EVENT, time.perf_counter() - started)


def _load(path: Path, material: str, device):
    from jax.experimental import serialize_executable

    entry = pickle.loads(path.read_bytes())
    if entry["format"] != FORMAT or entry["material"] != material:
        raise ValueError("not this program")
    return serialize_executable.deserialize_and_load(entry["executable"], entry["in_tree"], entry["out_tree"],
                                                     backend=device.client, execution_devices=[device])


def _store(path: Path, material: str, compiled) -> bool:
    """Writes the program (atomically: a reader never sees half a file); False when it cannot be serialized or
    written (a read-only directory, a full disk, a program jax cannot serialize)."""
    try:
        from jax.experimental import serialize_executable

        executable, in_tree, out_tree = serialize_executable.serialize(compiled)
        with io.BytesIO() as buffer:
            pickle.dump({"format": FORMAT, "material": material, "executable": executable, "in_tree": in_tree,
                         "out_tree": out_tree}, buffer, protocol=pickle.HIGHEST_PROTOCOL)
            data = buffer.getvalue()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: tmp.write_bytes(data))
        return True
    except Exception:  # noqa: BLE001 (a store that cannot be written is a store that is off)
        return False


# ---------------------------------------------------------------- keys


def _signature(args):
    """(tree structure, per-leaf (shape, dtype, weak type), device, jax trace context): hashable, and cheap, since
    `decode_steps` pays it every step (about 0.2 ms for LLaDA-8B's 373 leaves); None for arguments the store does
    not take (tracers, arrays on several devices or on different devices, other leaves)."""
    leaves, treedef = jax.tree.flatten(args)
    avals, device, seen = [], None, None
    for leaf in leaves:
        abstract = type(leaf) is jax.ShapeDtypeStruct  # `prefetch`'s stand-in for an array
        if not abstract and not _is_device_array(type(leaf)):  # a tracer, a NumPy value, something else
            if isinstance(leaf, (np.ndarray, np.generic)):
                avals.append((leaf.shape, leaf.dtype, False))
                continue
            return None
        where = leaf.sharding
        if where is not seen:  # arrays mostly share one sharding object: check each object once
            if type(where) is not jax.sharding.SingleDeviceSharding:
                return None
            (here,) = where.device_set
            if device is None:
                device = here
            elif here != device:
                return None
            seen = where
        aval = leaf if abstract else leaf.aval
        avals.append((aval.shape, aval.dtype, aval.weak_type))
    if device is None:
        return None
    return treedef, tuple(avals), device, _trace_context()


@functools.cache
def _is_device_array(kind: type) -> bool:
    """Whether a leaf of this class is a concrete device array (typed PRNG keys included), not a tracer; asked once
    per class, as `isinstance` against these abstract classes is slow."""
    return issubclass(kind, jax.Array) and not issubclass(kind, jax.core.Tracer)


def _trace_context():
    from jax._src import config

    return config.trace_context()


def _key_material(name: str, signature) -> str | None:
    """The text whose hash names the stored file; None when it cannot identify the program across processes."""
    treedef, avals, device, context = signature
    if not _jdlm_nodes_only(treedef):
        return None
    import jaxlib

    settings = sorted((k, repr(v)) for k, v in jax.config.values.items() if k not in _LOGGING)
    lines = [FORMAT, name, str(treedef), repr(avals),
             f"device {device.platform} {device.id} {device.device_kind} {device.client.platform_version}",
             f"devices {jax.device_count()} processes {jax.process_count()}",
             f"jdlm {_jdlm_version()} {_source_digest()}",
             f"jax {jax.__version__} jaxlib {jaxlib.__version__} python {sys.version}",
             f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')} LIBTPU_INIT_ARGS={os.environ.get('LIBTPU_INIT_ARGS', '')}",
             f"kernels {kernel_switches.all_modes()}",
             repr(settings), repr([_stable_repr(value) for value in context])]
    material = "\n".join(lines)
    # An object's default repr differs from process to process: such a key would never be found again.
    return None if " at 0x" in material else material


def _stable_repr(value) -> str:
    """repr, with an object printed by its slots (JAX's AxisEnv) instead of its address."""
    text = repr(value)
    if " at 0x" not in text:
        return text
    slots = [name for name in getattr(type(value), "__slots__", ()) if not name.startswith("__")]
    return f"{type(value).__name__}{[(name, getattr(value, name, None)) for name in slots]!r}"


def _jdlm_nodes_only(treedef) -> bool:
    """Every tree node is a builtin container or a jdlm class: no code outside the source digest shapes the
    program."""
    data = treedef.node_data()
    if data is not None:
        kind = data[0]
        if kind not in (tuple, list, dict, type(None)) and not kind.__module__.startswith("jdlm."):
            return False
    return all(_jdlm_nodes_only(child) for child in treedef.children())


def _jdlm_version() -> str:
    import jdlm

    return jdlm.__version__


@functools.cache
def _source_digest() -> str:
    """sha256 over jdlm's Python files (their paths and contents): an edited checkout never loads an older build."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
