"""Runs `jdlm generate`, `jdlm chat` and `jdlm bench` in this process on one device and with --mesh over 8 host CPU
devices; prints what tests/test_cli_mesh.py checks, as JSON. Run in its own process: the device count is fixed
when JAX starts.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python tests/cli_mesh_worker.py WORKDIR
"""

from __future__ import annotations

import io
import json
import sys

import jax

from tests.sharding_worker import cli, random_checkpoint

MESHES = ("data=2,model=4", "model=8", "data=8")  # tensor and data parallel, each alone and together
PROMPT = "countdown:\n12,3,4,19"
CHAT = "countdown:\\\n12,3,4,19\nsudoku:\\\n1200\\\n0040\\\n0000\\\n0001\n"  # two turns, continued lines


def chat(*args: str, stdin: str) -> dict:
    """`jdlm chat ARGS` in this process with `stdin` as its input."""
    saved, sys.stdin = sys.stdin, io.StringIO(stdin)
    try:
        return cli("chat", *args)
    finally:
        sys.stdin = saved


def main(workdir: str) -> None:
    jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py
    checkpoint = f"{workdir}/checkpoint"
    random_checkpoint(checkpoint)
    fast = ["--model", checkpoint, "--gen-length", "16", "--block-length", "8"]
    out: dict = {"devices": jax.device_count(), "generate": {}, "chat": {}}
    for mesh in (None, *MESHES):
        flags = [] if mesh is None else ["--mesh", mesh]
        out["generate"][mesh or "one"] = cli("generate", PROMPT, "--json", *fast, "--strategy", "threshold:0.9",
                                             "--cache", "dual", *flags)
    for mesh in (None, "data=2,model=4"):
        flags = [] if mesh is None else ["--mesh", mesh]
        out["chat"][mesh or "one"] = chat(*fast, *flags, stdin=CHAT)
    bench_json = f"{workdir}/bench.json"
    out["bench"] = cli("bench", "--model", checkpoint, "--mesh", "data=2,model=4", "--strategy", "low_confidence",
                       "--batch-size", "2", "--prompt-length", "8", "--repeats", "1", "--json", bench_json, "--quiet",
                       "--gen-length", "16", "--block-length", "8")
    if out["bench"]["code"] == 0:
        with open(bench_json) as f:
            out["bench"]["json"] = json.load(f)
    out["errors"] = dict(
        too_many_devices=cli("generate", PROMPT, *fast, "--mesh", "data=4,model=4"),
        heads_do_not_divide=cli("chat", "--model", "tiny", "--mesh", "model=2"),
        causal=cli("generate", PROMPT, "--model", "tiny-ar", "--mesh", "model=2"))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
