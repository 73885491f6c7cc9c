"""jdlm.decoding.executables: a fresh process runs the stored decode (no tracing) and decodes the same tokens; a
new strategy structure or shape is a new program; a corrupt stored file is compiled again, silently; arguments the
store does not key (tracers, a mesh, tree nodes from outside jdlm) keep to jax.jit.

Each process is a subprocess (tests/executables_worker.py) sharing one cache folder."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdlm.decoding import executables

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
ENV.pop("JDLM_EXECUTABLE_CACHE", None)
SPEC = "threshold:0.5 dual gen_length=16 block_length=8"
DECODE = {"strategy": SPEC, "prompt_length": 5}
STEPS = {**DECODE, "steps": True}


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Outside:
    """A tree node whose code jdlm's source digest does not cover."""

    a: jax.Array


def run(cache: Path, decodes: list[dict]) -> list[dict]:
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "executables_worker.py"), str(cache),
                          json.dumps(decodes)], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """Three processes over one cache: the first compiles and stores; the second loads (a knob value changed
    first, then the same decode), and compiles a new structure and a new prompt length; the third finds every
    stored file corrupt."""
    cache = tmp_path_factory.mktemp("cache")
    first = run(cache, [DECODE, STEPS])
    decode_file = next((cache / executables.SUBDIR).glob("decode_loop-*"))
    second = run(cache, [{**DECODE, "strategy": SPEC.replace("0.5", "0.9")}, DECODE, STEPS,
                         {**DECODE, "strategy": SPEC.replace("dual", "prefix")}, {**DECODE, "prompt_length": 6}])
    prefetched = run(cache, [{**DECODE, "prefetch": True}, {**STEPS, "prefetch": "unplaced"},
                             {**DECODE, "prompt_length": 7, "prefetch": True}])
    stored = sorted((cache / executables.SUBDIR).iterdir())
    for path in stored:
        path.write_bytes(b"not a pickle" + path.read_bytes()[:100])
    third = run(cache, [DECODE])
    return {"first": first, "second": second, "prefetched": prefetched, "third": third, "stored": stored,
            "decode_file": decode_file}


def test_first_process_compiles_and_stores(processes):
    decode, steps = processes["first"]
    assert decode["events"] == {"stored": 2} and "_decode_loop" in decode["lowered"]  # with the row keys' program
    assert steps["events"] == {"stored": 2} and {"init_state", "_advance"} <= set(steps["lowered"])
    # after the first three processes: the four programs, and three more decode loops (see below)
    assert sorted(p.name.split("-")[0] for p in processes["stored"]) == \
        ["advance"] + ["decode_loop"] * 4 + ["init", "row_keys_1"]


def test_second_process_runs_the_stored_programs_without_tracing(processes):
    first, (knob, decode, steps, _, _) = processes["first"], processes["second"]
    assert knob["events"] == {"loaded": 2} and knob["lowered"] == []  # a knob value is not part of the key
    assert decode["events"] == {} and decode["lowered"] == []  # loaded once, kept for the process
    assert steps["events"] == {"loaded": 2} and steps["lowered"] == []
    for name, result in [("decode", decode), ("steps", steps)]:
        assert result["tokens"] == first[0]["tokens"] and result["nfe"] == first[0]["nfe"], name


def test_prefetch_loads_the_stored_programs_in_the_background(processes):
    """`prefetch` from the weights' shapes alone (before any weight exists; placed on the device or, for the
    steps, as `param_shapes` gives them) finds the programs the decode then runs; a shape nothing is stored for
    starts nothing, and its decode compiles as usual."""
    decode, steps, unseen = processes["prefetched"]
    assert decode["prefetch"] == 1 and decode["events"] == {"loaded": 2, "prefetched": 1}  # and the row keys'
    assert steps["prefetch"] == 2 and steps["events"] == {"loaded": 2, "prefetched": 2}  # init and advance
    for result in (decode, steps):
        assert result["lowered"] == []
        assert result["tokens"] == processes["first"][0]["tokens"] and result["nfe"] == processes["first"][0]["nfe"]
    assert unseen["prefetch"] == 0 and unseen["events"] == {"stored": 1} and "_decode_loop" in unseen["lowered"]


def test_new_structure_or_shape_is_a_new_program(processes):
    structure, shape = processes["second"][3:]
    for result in (structure, shape):
        assert result["events"] == {"stored": 1} and "_decode_loop" in result["lowered"]
    assert len(shape["tokens"][0]) == 16


def test_corrupt_file_is_compiled_again_and_replaced(processes):
    (decode,) = processes["third"]
    assert decode["events"] == {"failed": 2, "stored": 2} and "_decode_loop" in decode["lowered"]
    assert decode["tokens"] == processes["first"][0]["tokens"]
    assert not processes["decode_file"].read_bytes().startswith(b"not a pickle")


def test_store_is_off_without_a_persistent_cache_or_with_the_switch(monkeypatch, tmp_path):
    assert jax.config.jax_compilation_cache_dir is None
    assert executables.store_directory() is None
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    try:
        assert executables.store_directory() == tmp_path / executables.SUBDIR
        monkeypatch.setenv("JDLM_EXECUTABLE_CACHE", "0")
        assert executables.store_directory() is None
    finally:
        jax.config.update("jax_compilation_cache_dir", None)


def test_unkeyed_arguments_keep_to_jit(monkeypatch, tmp_path):
    x = jnp.ones((2, 3))
    assert executables._signature((x, np.float32(1.0), None)) is not None
    seen = []
    jax.jit(lambda y: seen.append(executables._signature((y,))) or y)(x)
    assert seen == [None]  # a tracer: decode inside the caller's jit
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    on_mesh = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    assert executables._signature((on_mesh,)) is None

    signature = executables._signature((Outside(a=x),))
    assert signature is not None and executables._key_material("decode_loop", signature) is None
    before = executables.EVENTS.copy()
    monkeypatch.setattr(executables, "store_directory", lambda: tmp_path)  # on (JAX's own cache stays off)
    out = executables.call("outside", jax.jit(lambda node: node.a + 1), Outside(a=x))
    np.testing.assert_array_equal(out, x + 1)
    assert executables.EVENTS - before == {"unkeyed": 1} and not any(tmp_path.iterdir())
    assert executables._key_material("decode_loop", executables._signature(({"a": x},))) is not None


def test_key_changes_with_jdlm_source_and_jax_settings(monkeypatch):
    signature = executables._signature(({"a": jnp.ones((2, 3))},))
    base = executables._key_material("decode_loop", signature)
    assert base == executables._key_material("decode_loop", executables._signature(({"a": jnp.zeros((2, 3))},)))
    assert base != executables._key_material("advance", signature)
    assert base != executables._key_material("decode_loop", executables._signature(({"a": jnp.ones((2, 4))},)))
    monkeypatch.setattr(executables, "_source_digest", lambda: "an edited checkout")
    assert base != executables._key_material("decode_loop", signature)
    monkeypatch.undo()
    precision = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", "bfloat16" if precision != "bfloat16" else "highest")
    try:
        assert base != executables._key_material("decode_loop", executables._signature(({"a": jnp.ones((2, 3))},)))
    finally:
        jax.config.update("jax_default_matmul_precision", precision)


def test_key_changes_with_the_kernels_modes():
    from jdlm.kernels import quantized_linear, window_attention

    signature = executables._signature(({"a": jnp.ones((2, 3))},))
    base = executables._key_material("decode_loop", signature)
    with window_attention.use_kernel("on"):
        assert executables._key_material("decode_loop", signature) != base
    with quantized_linear.use_kernel("on"):
        assert executables._key_material("decode_loop", signature) != base
    assert executables._key_material("decode_loop", signature) == base


def test_prefetch_under_other_kernel_modes_is_not_run(monkeypatch, tmp_path):
    """A program prefetched before a kernel mode changed (as the CLI's --no-attention-kernel does after it
    prefetches) is not the program the call would trace: the call compiles its own instead of running it."""
    from jdlm.kernels import window_attention

    def traced_under_mode():  # a new function each time: jax's own tracing cache does not answer for the mode
        return jax.jit(lambda a: a + (1.0 if window_attention.current_mode() == "on" else 0.0))

    monkeypatch.setattr(executables, "store_directory", lambda: tmp_path)
    x = jnp.ones((2, 3))
    try:
        with window_attention.use_kernel("on"):
            np.testing.assert_array_equal(executables.call("mode_probe", traced_under_mode(), x), x + 1)
            executables.clear()
            assert executables.prefetch("mode_probe", (x,))
        before = executables.EVENTS.copy()
        with window_attention.use_kernel("off"):
            out = executables.call("mode_probe", traced_under_mode(), x)
        np.testing.assert_array_equal(out, x)
        assert executables.EVENTS - before == {"stored": 1}
    finally:
        executables.clear()


def test_a_prefetched_load_is_compile_time_only_while_the_call_waits(monkeypatch, tmp_path):
    """The CLI counts LOAD_EVENT as compile time around the decode call: for a prefetched program, only the seconds
    the call waited for it, not the part of its load that ran while the weights loaded (PREFETCH_EVENT)."""
    monkeypatch.setattr(executables, "store_directory", lambda: tmp_path)
    x, jitted = jnp.ones((2, 3)), jax.jit(lambda a: a * 2)
    load, started, release = executables._load, threading.Event(), threading.Event()

    def slow_load(*args):
        started.set()
        release.wait(30)
        return load(*args)

    recorded = []

    def listen(event, seconds, **kwargs):
        recorded.append((event, seconds))

    try:
        executables.call("wait_probe", jitted, x)
        executables.clear()
        monkeypatch.setattr(executables, "_load", slow_load)
        assert executables.prefetch("wait_probe", (x,))
        assert started.wait(30)
        time.sleep(0.3)  # the caller's own work (its weights) while the program loads
        jax.monitoring.register_event_duration_secs_listener(listen)
        release.set()
        np.testing.assert_array_equal(executables.call("wait_probe", jitted, x), x * 2)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
        release.set()
        executables.clear()
    waited = [seconds for event, seconds in recorded if event == executables.LOAD_EVENT]
    loading = [seconds for event, seconds in recorded if event == executables.PREFETCH_EVENT]
    assert len(waited) == 1 and waited[0] < 0.3 and len(loading) == 1 and loading[0] >= 0.3


def test_generate_loads_its_decode_while_its_weights_load(tmp_path):
    """`jdlm generate` run twice on one cache: the second run finds its decode's program from the checkpoint's
    shapes and the prompt before the weights are read (`prefetch_for_prompt`), and answers the same."""
    code = ("import json, sys; from jdlm.cli import main; from jdlm.decoding import executables; "
            "rc = main(['generate', '-m', 'tiny', '--quiet', sys.argv[1]]); "
            "print(json.dumps([rc, dict(executables.EVENTS)]))")
    env = {**ENV, "JDLM_COMPILATION_CACHE": str(tmp_path)}
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code, "sudoku:\n0003\n1000\n3400\n0030"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=300, check=False)
        assert out.returncode == 0, out.stderr[-3000:]
        *answer, status = out.stdout.strip().splitlines()
        runs.append((answer, json.loads(status)))
    (first_answer, (first_rc, first_events)), (answer, (rc, events)) = runs
    assert first_rc == rc == 0 and first_answer == answer and answer
    assert first_events.get("stored", 0) >= 2 and "prefetched" not in first_events  # the row keys and the loop
    assert events == {"loaded": 2, "prefetched": 1}  # the loop, in the background; the row keys as before
