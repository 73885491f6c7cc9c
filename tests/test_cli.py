"""The `jdlm` command line, end to end: every command's --help, generate / chat / inspect on a small random
checkpoint, and the bad inputs a user can give (exit code 2, one `error:` line)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("generate", "chat", "convert", "inspect", "eval", "bench")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONIOENCODING": "utf-8", "TERM": "dumb",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "JDLM_COMPILATION_CACHE": "0"}
# Fast flags: a 16-token generation in two blocks of 8 with the dual cache (one small compile per process).
FAST = ["--gen-length", "16", "--block-length", "8", "--strategy", "threshold:0.9", "--cache", "dual"]
PROMPT = "What is 2 + 3?"


def jdlm(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """Runs `python -m jdlm ARGS` as a user would; stdout, stderr as text."""
    return subprocess.run([sys.executable, "-m", "jdlm", *args], input=stdin, capture_output=True, text=True,
                          check=False, env=ENV, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A random-weight checkpoint with the real small-model tokenizer, shrunk for speed."""
    from jdlm.training import presets

    config = dataclasses.replace(presets.tiny_mdm_config(), d_model=64, n_layers=2, n_heads=2, n_kv_heads=2,
                                 head_dim=32, mlp_hidden=128)
    return presets.random_checkpoint(tmp_path_factory.mktemp("cli") / "small", config)


# ---------------------------------------------------------------- help


def test_top_level_help_lists_commands_and_exit_codes():
    out = jdlm("--help")
    assert out.returncode == 0, out.stderr
    for command in COMMANDS:
        assert command in out.stdout
    assert "exit codes:" in out.stdout and "130" in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command):
    out = jdlm(command, "--help")
    assert out.returncode == 0, out.stderr
    assert f"jdlm {command}" in out.stdout and "examples:" in out.stdout and "exit codes:" in out.stdout


def test_strategy_help_names_every_rule():
    from jdlm.cli.args import STRATEGY_HELP
    from jdlm.decoding import names

    for name, entry in names.RULES.items():
        assert f"{entry.spelling} " in STRATEGY_HELP and entry.help in STRATEGY_HELP
        assert entry.load()  # every name points at a class


def test_parser_imports_no_jax():
    """`jdlm --help` stays fast: building every command's parser needs only the standard library."""
    probe = ("import sys\n"
             "from jdlm.cli import build_parser\n"
             "build_parser().format_help()\n"
             "print(sorted(k for k in sys.modules if k.split('.')[0] in ('jax', 'numpy', 'rich')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False, env=ENV,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- generate, inspect, chat


def test_generate_json_trace_html_and_show(model, tmp_path):
    html = tmp_path / "trace.html"
    out = jdlm("generate", PROMPT, "--model", str(model), *FAST, "--json", "--show", "--trace", str(html))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["nfe"] >= 1 and result["forwards"] >= result["nfe"] and result["gen_length"] == 16
    assert len(result["token_ids"]) == len(result["reveal_step"]) <= 16
    assert result["compile_s"] > 0 and result["run_s"] >= 0 and isinstance(result["text"], str)
    assert "compiled in" in out.stderr and "NFE" in out.stderr
    assert "tokens revealed" in out.stderr and "step 1" in out.stderr  # --show's final frame (stderr is no tty)
    page = html.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "src=" not in page and "href=" not in page  # self-contained
    for token in result["token_ids"]:
        assert f'data-id="{token}"' in page
    assert "confidence" in page and "step 1" in page


def test_generate_reads_stdin_and_prints_only_the_answer(model, tmp_path):
    png = tmp_path / "trace.png"
    pytest.importorskip("matplotlib")  # the [plot] extra; CI installs it
    by_arg = jdlm("generate", PROMPT, "--model", str(model), *FAST, "--json")
    by_stdin = jdlm("generate", "-", "--model", str(model), *FAST, "--trace", str(png), stdin=PROMPT + "\n")
    assert by_arg.returncode == 0 and by_stdin.returncode == 0, by_stdin.stderr
    assert by_stdin.stdout == json.loads(by_arg.stdout)["text"] + "\n"  # the answer alone on stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_json(model):
    out = jdlm("inspect", str(model), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["kind"] == "jdlm" and info["dtype"] == "float32" and info["complete"]
    from jdlm.config import ModelConfig

    assert info["n_params"] == ModelConfig.from_dict(info["config"]).n_params > 0
    assert {"config.json", "manifest.json", "params/", "tokenizer.json"} <= set(info["files"])
    assert info["manifest"]["tensors"] > 0


def test_convert_then_inspect(tmp_path):
    pytest.importorskip("torch")  # the [test] extra: builds the Hugging Face source checkpoint
    from tests.hf_fixtures import build_torch_model, write_hf_checkpoint

    src = write_hf_checkpoint("llada", build_torch_model("llada", seed=3), tmp_path / "hf")
    dst = tmp_path / "converted"
    out = jdlm("convert", "llada", str(src), str(dst))
    assert out.returncode == 0, out.stderr
    assert f"wrote {dst}" in out.stderr and (dst / "manifest.json").exists()
    out = jdlm("inspect", str(dst))
    assert out.returncode == 0, out.stderr
    assert "jdlm checkpoint" in out.stdout and "parameters" in out.stdout and "source_files" in out.stdout


def test_chat_keeps_history_and_takes_commands(model):
    out = jdlm("chat", "--model", str(model), *FAST, stdin=f"{PROMPT}\nand then?\n/reset\nhello\n/exit\nignored\n")
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("decoded ") == 3  # three turns answered, nothing after /exit
    assert "conversation cleared" in out.stderr


def test_eval_and_bench_smoke(model, tmp_path):
    report = tmp_path / "eval.json"
    out = jdlm("eval", "--model", str(model), "--task", "sudoku", "--limit", "4", "--batch-size", "4",
               "--strategy", "threshold:0.9", "--json", str(report))
    assert out.returncode == 0, out.stderr
    assert "sudoku" in out.stdout and "threshold:0.9" in out.stdout
    assert json.loads(report.read_text())
    out = jdlm("bench", "--model", str(model), "--strategy", "low_confidence", "--gen-length", "16",
               "--prompt-length", "16", "--repeats", "1")
    assert out.returncode == 0, out.stderr
    assert "low_confidence" in out.stdout and "tokens/s" in out.stdout


# ---------------------------------------------------------------- bad inputs: exit 2, one line


def hf_directory(tmp_path: Path) -> Path:
    """A directory that looks like an unconverted Hugging Face checkpoint."""
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llada", "d_model": 64}))
    return hf


BAD = {
    "unknown strategy": (["generate", PROMPT, "--strategy", "bogus"], "unknown strategy"),
    "bad strategy value": (["generate", PROMPT, "--strategy", "threshold:x"], "needs a number"),
    "bad cache": (["generate", PROMPT, "--cache", "triple"], "--cache"),
    "missing model": (["generate", PROMPT, "--model", "/no/such/model"], "does not exist"),
    "unconverted model": (["generate", PROMPT, "--model", "{hf}"], "jdlm convert"),
    "block does not divide": (["generate", PROMPT, "--gen-length", "20", "--block-length", "8"], "--block-length"),
    "empty prompt": (["generate", "  "], "prompt is empty"),
    "prompt too long": (["generate", "7 " * 300, "--gen-length", "16"], "prompt too long"),
    "negative length": (["generate", PROMPT, "--gen-length", "0"], "positive integer"),
    "bad trace format": (["generate", PROMPT, "--trace", "out.gif"], ".html or .png"),
    "unknown command": (["frobnicate"], "invalid choice"),
    "convert missing source": (["convert", "llada", "/no/such/dir", "{tmp}/dst"], "not a directory"),
    "inspect missing path": (["inspect", "/no/such/model"], "does not exist"),
    "eval unknown task": (["eval", "--task", "poetry"], "unknown task"),
    "bench bad strategy": (["bench", "--strategy", "threshold:2"], "threshold"),
    "convert into its source": (["convert", "llada", "{hf}", "{hf}", "--overwrite"], "is the source"),
    "convert over a folder": (["convert", "llada", "/no/such/dir", "{hf}", "--overwrite"], "not a jdlm checkpoint"),
    "convert to an existing folder": (["convert", "llada", "/no/such/dir", "{hf}"], "already exists"),
    "float16 on CPU": (["generate", PROMPT, "--dtype", "float16"], "does not run on CPU"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_error_line_and_exit_2(name, model, tmp_path):
    args, expected = BAD[name]
    hf = hf_directory(tmp_path)
    args = [a.format(hf=hf, tmp=tmp_path) for a in args]
    if args[0] == "generate" and "--model" not in args:
        args += ["--model", str(model)]
    out = jdlm(*args)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert expected in lines[0]
    assert out.stdout == ""


def test_generate_with_the_packaged_tiny_model_solves_a_sudoku():
    from jdlm.tasks import TASKS

    task = TASKS["sudoku"]
    example = task.generate("eval", 1, seed=3)[0]
    out = jdlm("generate", task.prompt(example.input).strip(), "--gen-length", "24", "--block-length", "8")
    assert out.returncode == 0, out.stderr
    assert task.score(example.input, out.stdout), out.stdout


def test_missing_packaged_model_says_how_to_fix(tmp_path, monkeypatch):
    from jdlm import checkpoint

    monkeypatch.setattr(checkpoint, "packaged_model_dir", lambda name: tmp_path / name)
    with pytest.raises(checkpoint.CheckpointError, match="reinstall jdlm"):
        checkpoint.resolve("tiny")


def test_debug_shows_the_traceback():
    out = jdlm("--debug", "inspect", "/no/such/model")
    assert out.returncode == 2 and "Traceback" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")


def test_second_generate_loads_the_compiled_decode_from_the_cache(tmp_path):
    env = {**ENV, "JDLM_COMPILATION_CACHE": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-m", "jdlm", "generate", "--json", *FAST, "sudoku:\n1.3.\n.4.2\n2..3\n.1.4"],
                           capture_output=True, text=True, env=env, timeout=300) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr
    first, second = (json.loads(r.stdout) for r in runs)
    assert any((tmp_path / "cache").iterdir()), "nothing was written to the compilation cache"
    assert first["text"] == second["text"]
    assert second["compile_s"] < 0.5 * first["compile_s"], (first["compile_s"], second["compile_s"])


def test_ctrl_c_stops_a_long_decode_within_a_second():
    import signal
    import time

    cmd = [sys.executable, "-m", "jdlm", "generate", "--quiet", "--gen-length", "224", "--block-length", "224",
           "--no-eos-stop", "--cfg", "1", "sudoku:\n1.3.\n.4.2\n2..3\n.1.4"]  # 224 forward passes at twice the batch
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(8)  # imports, load and compile; the decode itself takes much longer
    assert proc.poll() is None, "the decode finished before it could be interrupted; make it longer"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 1.0, f"took {time.monotonic() - sent:.1f} s to stop"
    assert proc.returncode == 130 and "interrupted" in err


def test_damaged_checkpoint_is_one_error_line(model, tmp_path):
    import shutil

    copy = shutil.copytree(model, tmp_path / "copy")
    damaged = max((p for p in (copy / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    out = jdlm("generate", PROMPT, "--model", str(copy), *FAST)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert damaged.name in lines[0] and "convert or save it again" in lines[0]
    assert out.stdout == ""


def test_python_m_jdlm_convert_is_jdlm_convert(tmp_path):
    from tests.hf_fixtures import build_torch_model, write_hf_checkpoint

    src = write_hf_checkpoint("llada", build_torch_model("llada", seed=3), tmp_path / "hf")
    run = [sys.executable, "-m", "jdlm.convert", "llada", str(src)]
    out = subprocess.run([*run, str(tmp_path / "out")], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and "converting tensors" in out.stderr  # progress and notes on stderr only
    out = subprocess.run([*run, str(src), "--overwrite"], capture_output=True, text=True, env=ENV, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "is the source" in lines[0], out.stderr
    assert (src / "model.safetensors").exists()


def test_packaged_name_wins_over_a_local_folder_and_says_so(tmp_path, monkeypatch):
    import argparse

    from jdlm.cli.common import load_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JDLM_COMPILATION_CACHE", "0")  # in-process: leave JAX's settings alone
    _, _, loaded = load_model(argparse.Namespace(model="tiny", dtype="auto"))
    assert "./tiny" not in loaded
    (tmp_path / "tiny").mkdir()
    _, _, loaded = load_model(argparse.Namespace(model="tiny", dtype="auto"))
    assert "the packaged model; for the folder ./tiny pass --model ./tiny" in loaded
    assert "a packaged name wins over a local folder" in " ".join(jdlm("generate", "--help").stdout.split())
