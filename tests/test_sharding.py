"""jdlm.sharding: meshes of 8 host CPU devices decode exactly as one device, weights are really split, sharded
restore, the --mesh flag, multi-host wiring, and the TPU / GPU launch scripts (their --dry-run output).

The multi-device part runs in a subprocess (tests/sharding_worker.py) started with 8 host devices: this process
has already started JAX with one."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import jdlm
from jdlm import sharding
from jdlm.errors import ShardingError
from jdlm.model import param_shapes
from tests.sharding_worker import MESHES

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "JDLM_COMPILATION_CACHE": "0",
       "TERM": "dumb"}
FIELDS = ("tokens", "nfe", "forwards", "trace")


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> dict:
    """What tests/sharding_worker.py measured on 8 devices."""
    workdir = tmp_path_factory.mktemp("sharding")
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "sharding_worker.py"), str(workdir)], env=ENV,
                         cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- 8 devices (the worker)


CASES = [(f"{data}x{model}", name) for (data, model), names in MESHES.items() for name in names]


@pytest.mark.parametrize("mesh,strategy", CASES, ids=[f"{m}-{s}" for m, s in CASES])
def test_mesh_decodes_as_one_device(worker, mesh, strategy):
    """Same tokens, NFE, forward count and unmasking order as one device; the batch of 3 is padded to the data
    axis (to 4 and 8) and the padding dropped."""
    got, want = worker["meshes"][mesh]["result"][strategy], worker["one_device"][strategy]
    assert worker["devices"] == 8
    for field in FIELDS:
        assert got[field] == want[field], field


def test_every_strategy_and_mesh_is_covered(worker):
    runs = {(mesh, name) for mesh, m in worker["meshes"].items() for name in m["result"]}
    assert {mesh for mesh, _ in runs} == {"1x8", "2x4", "8x1"}
    assert {name for _, name in runs} == set(worker["one_device"]) == {"low_confidence", "dual", "prefix"}


@pytest.mark.parametrize("mesh", ["1x8", "2x4", "8x1"])
def test_large_weights_are_split_over_model(worker, mesh):
    """Each device holds 1/model of the matrices (embedding, head, attention, MLP): really sharded, not copied."""
    m = worker["meshes"][mesh]
    assert m["big_bytes_per_device"] == [worker["big_bytes"] // m["model"]] * 8


def test_decode_steps_on_a_mesh_ends_as_decode(worker):
    assert worker["decode_steps_last"] == worker["one_device"]["low_confidence"]["tokens"]


def test_replicated_large_weights_fail_the_check(worker):
    assert "16 large weights are replicated" in worker["replicated_check"]
    assert "shard_params" in worker["replicated_check"]


def test_load_with_a_mesh_restores_shards(worker):
    loaded = worker["loaded"]
    assert loaded["shardings_match"] and loaded["values_match"]
    assert loaded["big_bytes_per_device"] == [worker["big_bytes"] // 4] * 8  # data=2 x model=4


def test_cli_bench_and_eval_use_the_mesh(worker):
    bench, evaluation = worker["cli"]["bench_tp"], worker["cli"]["eval_dp"]
    assert bench["code"] == 0, bench["stderr"]
    assert "mesh data=2 x model=4 (8 cpu devices)" in " ".join(bench["stdout"].split())  # the title, wrapped
    assert evaluation["code"] == 0, evaluation["stderr"]
    assert "arithmetic" in evaluation["stdout"]


@pytest.mark.parametrize("case,message", [
    ("heads_do_not_divide", "mesh model=2 does not divide this model's heads 5, kv_heads 5; choose model among 1,"),
    ("too_many_devices", "mesh data=4 x model=4 needs 16 devices, but 8 are visible"),
])
def test_cli_mesh_that_does_not_fit_is_one_line(worker, case, message):
    out = worker["cli"][case]
    assert out["code"] == 2
    assert out["stderr"].strip().startswith(f"error: {message}") and len(out["stderr"].strip().splitlines()) == 1


# ---------------------------------------------------------------- rules and checks (no devices needed)


def test_rules_give_the_megatron_layout():
    cfg = jdlm.tiny(family="dream", qkv_bias=True, logits_shift=True)
    specs = sharding.param_specs(cfg)
    P = jax.sharding.PartitionSpec
    assert specs["embed"] == P("model", None) and specs["lm_head"] == P(None, "model")
    assert specs["final_norm"] == P(None)
    layer = specs["layers"][0]
    assert layer["q"] == P(None, "model", None) and layer["k"] == layer["v"] == P(None, "model", None)
    assert layer["o"] == P("model", None, None)
    assert layer["gate"] == layer["up"] == P(None, "model") and layer["down"] == P("model", None)
    assert layer["q_bias"] == layer["k_bias"] == layer["v_bias"] == P("model", None)
    assert layer["attn_norm"] == layer["mlp_norm"] == P(None)


def test_every_weight_has_a_rule():
    """A weight added to model.py without a line in PARAM_AXES fails here, not on a user's mesh."""
    for cfg in (jdlm.llada_8b(), jdlm.dream_7b(), jdlm.tiny(tie_embeddings=True)):
        shapes = jax.tree.leaves(param_shapes(cfg).weights)
        specs = jax.tree.leaves(sharding.param_specs(cfg), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
        assert len(specs) == len(shapes)
        assert all(len(spec) == len(shape.shape) for spec, shape in zip(specs, shapes))


def test_published_models_fit_their_meshes():
    sharding.check_fits(jdlm.llada_8b(), {"data": 1, "model": 8})
    sharding.check_fits(jdlm.dream_7b(), {"data": 2, "model": 4})


def test_heads_that_do_not_divide_are_refused_with_the_sizes_that_work():
    with pytest.raises(ShardingError, match=r"mesh model=8 does not divide this model's heads 28, kv_heads 4; "
                                            r"choose model among 1, 2, 4,"):
        sharding.check_fits(jdlm.dream_7b(), {"data": 1, "model": 8})


@pytest.mark.parametrize("text,message", [
    ("data=2,modle=4", "expected data=N,model=M"),
    ("data=0", "data must be a positive integer"),
    ("model=two", "model must be a positive integer"),
    ("data=2,data=4", "data is given twice"),
    ("4", "expected data=N,model=M"),
])
def test_bad_mesh_spec(text, message):
    with pytest.raises(ShardingError, match=message):
        sharding.parse_mesh(text)


def test_mesh_spec():
    assert sharding.parse_mesh("data=2, model=4") == {"data": 2, "model": 4}
    assert sharding.parse_mesh("model=2") == {"model": 2}


@pytest.mark.parametrize("sizes,message", [
    (dict(data=2), "needs 2 devices, but 1 are visible"),
    (dict(model=3), "model=3 does not divide the 1 visible devices"),
    (dict(data=0), "data must be a positive integer"),
])
def test_mesh_larger_than_the_devices_is_refused(sizes, message):
    with pytest.raises(ShardingError, match=message):
        sharding.make_mesh(**sizes)


def test_decode_finds_the_mesh_of_the_params():
    params = jax.tree.map(jax.numpy.zeros_like, param_shapes(jdlm.tiny(), jax.numpy.float32))
    mesh = sharding.make_mesh()
    assert sharding.mesh_of(sharding.shard_params(params, mesh)) == mesh
    assert sharding.mesh_of(params) is None  # on one device, not placed: decode runs as it always did


# ---------------------------------------------------------------- several hosts


@pytest.fixture
def joined(monkeypatch):
    """Records jax.distributed.initialize calls instead of making them."""
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(a))
    return calls


def test_one_host_is_a_no_op(joined):
    assert sharding.initialize_distributed({}) is False and joined == []
    assert sharding.initialize_distributed({"SLURM_NTASKS": "1"}) is False and joined == []


def test_coordinator_environment_joins_the_run(joined):
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert sharding.initialize_distributed(env) is True
    assert joined == [("10.0.0.1:1234", 2, 1)]


@pytest.mark.parametrize("env", [{"JDLM_DISTRIBUTED": "1"}, {"SLURM_NTASKS": "4"}, {"OMPI_COMM_WORLD_SIZE": "2"}])
def test_cluster_environments_let_jax_detect(joined, env):
    assert sharding.initialize_distributed(env) is True and joined == [()]


@pytest.mark.parametrize("env,message", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, "JAX_NUM_PROCESSES, JAX_PROCESS_ID not"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "0 <= JAX_PROCESS_ID"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "x", "JAX_PROCESS_ID": "0"}, "must be integers"),
])
def test_incomplete_coordinator_environment_is_refused(joined, env, message):
    with pytest.raises(ShardingError, match=message):
        sharding.initialize_distributed(env)
    assert joined == []


# ---------------------------------------------------------------- launch scripts (dry runs)


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=30, check=False)


def dry_run(name: str, *args: str) -> list[list[str]]:
    """The commands a script would run, each split into words as the shell would."""
    out = script(name, "--dry-run", *args)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.strip().splitlines()]


@pytest.mark.parametrize("name", ["tpu_vm.sh", "gpu_run.sh"])
def test_scripts_have_help(name):
    out = script(name, "--help")
    assert out.returncode == 0 and "--dry-run" in out.stdout and "examples:" in out.stdout


def test_tpu_vm_lifecycle():
    where = ["--zone", "us-central2-b", "--project", "p1"]
    create, = dry_run("tpu_vm.sh", "--type", "v4-32", "--project", "p1", "create")
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "jdlm-tpu", *where, "--accelerator-type",
                      "v4-32", "--version", "tpu-ubuntu2204-base"]
    pack, upload, install = dry_run("tpu_vm.sh", "--project", "p1", "setup")
    assert pack[0] == "tar" and upload[4] == "scp" and upload[-1] == "--worker=all"
    assert "pip install -U 'jax[tpu]'" in install[-1] and install[-2] == "--command"
    delete, = dry_run("tpu_vm.sh", "--project", "p1", "delete")
    assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "jdlm-tpu"]


def test_tpu_vm_runs_jdlm_on_every_worker():
    mkdir, copy = dry_run("tpu_vm.sh", "copy", "/data/llada-8b")
    assert copy[4:7] == ["scp", "--recurse", "/data/llada-8b"] and copy[7] == "jdlm-tpu:models/llada-8b"
    convert, = dry_run("tpu_vm.sh", "convert", "llada", "hf/LLaDA", "models/llada-8b")
    assert shlex.split(convert[-1]) == ["python3", "-m", "jdlm", "convert", "llada", "hf/LLaDA", "models/llada-8b"]
    bench, = dry_run("tpu_vm.sh", "--mesh", "model=4", "bench", "random", "--batch-size", "8")
    assert "--worker=all" in bench
    assert shlex.split(bench[-1]) == ["JDLM_DISTRIBUTED=1", "python3", "-m", "jdlm", "bench", "--random", "llada-8b",
                                      "--mesh", "model=4", "--batch-size", "8"]
    decode, = dry_run("tpu_vm.sh", "decode", "models/llada-8b", "What's 2 + 3?", "--gen-length", "64")
    assert "--worker=0" in decode
    assert shlex.split(decode[-1]) == ["python3", "-m", "jdlm", "generate", "--model", "models/llada-8b",
                                       "What's 2 + 3?", "--gen-length", "64"]


def test_gpu_run_single_and_multi_host():
    setup, run = dry_run("gpu_run.sh", "--setup", "--gpus", "0,1", "bench", "--random", "llada-8b", "--mesh",
                         "model=2")
    assert setup == ["python3", "-m", "pip", "install", "-e", f"{ROOT}[gpu]"]
    assert run == ["env", "CUDA_VISIBLE_DEVICES=0,1", "python3", "-m", "jdlm", "bench", "--random", "llada-8b",
                   "--mesh", "model=2"]
    node, = dry_run("gpu_run.sh", "--nodes", "2", "--node-rank", "1", "--coordinator", "10.0.0.1:1234", "eval",
                    "--model", "my dir")
    assert node == ["env", "JAX_COORDINATOR_ADDRESS=10.0.0.1:1234", "JAX_NUM_PROCESSES=2", "JAX_PROCESS_ID=1",
                    "python3", "-m", "jdlm", "eval", "--model", "my dir"]
    one, = dry_run("gpu_run.sh", "generate", "hi")
    assert one == ["python3", "-m", "jdlm", "generate", "hi"]


@pytest.mark.parametrize("name,args,message", [
    ("tpu_vm.sh", [], "no command given"),
    ("tpu_vm.sh", ["frob"], "unknown command frob"),
    ("tpu_vm.sh", ["--zone"], "--zone needs a value"),
    ("tpu_vm.sh", ["--bogus", "create"], "unknown option --bogus"),
    ("tpu_vm.sh", ["copy", "/no/such/dir"], "copy: /no/such/dir is not a directory"),
    ("tpu_vm.sh", ["--dry-run", "convert", "llada"], "convert needs FAMILY SRC DST"),
    ("tpu_vm.sh", ["--dry-run", "eval", "random"], "eval needs a trained checkpoint"),
    ("gpu_run.sh", [], "no jdlm command given"),
    ("gpu_run.sh", ["--gpus", "a", "bench"], "--gpus a: expected GPU indices"),
    ("gpu_run.sh", ["--nodes", "2", "bench"], "--nodes 2 needs --coordinator"),
    ("gpu_run.sh", ["--nodes", "2", "--coordinator", "h:1", "--node-rank", "2", "bench"], "needs --node-rank I"),
    ("gpu_run.sh", ["--coordinator", "h", "--nodes", "2", "--node-rank", "0", "x"], "expected HOST:PORT"),
    ("gpu_run.sh", ["--node-rank", "0", "bench"], "add --nodes N"),
])
def test_script_mistakes_are_one_line(name, args, message):
    out = script(name, *args)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: ") and message in out.stderr and len(out.stderr.strip().splitlines()) == 1
