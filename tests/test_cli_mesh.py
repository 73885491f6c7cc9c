"""`jdlm generate` and `jdlm chat` with --mesh decode as on one device (8 host CPU devices), `jdlm bench --json`
records its mesh, and a mesh that cannot work is one error line.

The commands run in a subprocess (tests/cli_mesh_worker.py) started with 8 host devices: this process has already
started JAX with one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_mesh_worker import MESHES

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "JDLM_COMPILATION_CACHE": "0",
       "TERM": "dumb"}


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("cli_mesh")
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_mesh_worker.py"), str(workdir)], env=ENV,
                         cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def generated(worker, mesh: str) -> dict:
    run = worker["generate"][mesh]
    assert run["code"] == 0, run["stderr"]
    return json.loads(run["stdout"])


@pytest.mark.parametrize("mesh", MESHES)
def test_generate_on_a_mesh_gives_the_one_device_tokens(worker, mesh):
    got, want = generated(worker, mesh), generated(worker, "one")
    assert worker["devices"] == 8
    for field in ("token_ids", "reveal_step", "nfe", "forwards", "text"):
        assert got[field] == want[field], field
    sizes = dict(item.split("=") for item in mesh.split(","))
    expected = {"data": int(sizes.get("data", 8 // int(sizes.get("model", 1)))), "model": int(sizes.get("model", 1))}
    assert got["mesh"] == expected and got["devices"] == 8
    assert want["mesh"] is None and want["devices"] == 1  # without --mesh: one device, though 8 are visible


def test_generate_says_where_it_loaded(worker):
    err = " ".join(worker["generate"]["data=2,model=4"]["stderr"].split())
    assert "onto mesh data=2 x model=4 (8 cpu devices)" in err
    assert "onto mesh" not in worker["generate"]["one"]["stderr"]


def test_chat_on_a_mesh_answers_as_one_device(worker):
    one, mesh = worker["chat"]["one"], worker["chat"]["data=2,model=4"]
    assert one["code"] == 0 and mesh["code"] == 0, (one["stderr"], mesh["stderr"])
    assert mesh["stdout"] == one["stdout"] and len(one["stdout"].splitlines()) >= 2  # two replies, the same
    assert "onto mesh data=2 x model=4" in " ".join(mesh["stderr"].split())


def test_bench_json_records_the_mesh(worker):
    bench = worker["bench"]
    assert bench["code"] == 0, bench["stderr"]
    row, = bench["json"]["results"]
    assert row["mesh"] == {"data": 2, "model": 4} and row["devices"] == 8 and row["batch"] == 2


@pytest.mark.parametrize("case,message", [
    ("too_many_devices", "error: mesh data=4 x model=4 needs 16 devices, but 8 are visible"),
    ("heads_do_not_divide", "error: mesh model=2 does not divide this model's heads 5, kv_heads 5"),
    ("causal", "error: --mesh: only for masked-diffusion models; tiny-ar is a causal model"),
])
def test_a_mesh_that_cannot_work_is_one_line(worker, case, message):
    out = worker["errors"][case]
    assert out["code"] == 2 and out["stdout"] == ""
    assert out["stderr"].startswith(message) and len(out["stderr"].strip().splitlines()) == 1
