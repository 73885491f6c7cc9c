"""The `jdlm` command line, end to end: every command's --help, generate / chat / inspect on a small random
checkpoint, and the bad inputs a user can give (exit code 2, one `error:` line)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
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
    # One convention everywhere: forward passes count from 1 (the first pass reveals something).
    assert min(result["reveal_step"]) == 1 and max(result["reveal_step"]) <= result["forwards"]
    page_steps = [int(s) for s in re.findall(r'data-step="(-?\d+)"', page)]
    assert page_steps[: len(result["reveal_step"])] == result["reveal_step"]


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
    assert "low_confidence" in out.stdout and "tok/s" in out.stdout and "/floor" in out.stdout


# ---------------------------------------------------------------- bad inputs: exit 2, one line


def hf_directory(tmp_path: Path) -> Path:
    """A directory that looks like an unconverted Hugging Face checkpoint."""
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llada", "d_model": 64}))
    return hf


BAD = {
    "unknown flag names the command's help": (["generate", PROMPT, "--gen-lenght", "5"],
                                              "did you mean '--gen-length'?) (see 'jdlm generate --help')"),
    "misspelt command": (["generat", PROMPT], "did you mean 'generate'"),
    "misspelt cache": (["generate", PROMPT, "--cache", "dul"], "did you mean 'dual'"),
    "misspelt packaged model": (["generate", PROMPT, "--model", "tiny_ar"],
                                ("does not exist (did you mean 'tiny-ar'?); give a converted checkpoint directory or "
                                 "a packaged model (tiny, tiny-ar)")),
    "misspelt task": (["eval", "--task", "sudok"], "did you mean 'sudoku'"),
    "gen-length beyond the context": (["generate", PROMPT, "--gen-length", "100000"],
                                      "--gen-length 100000 exceeds the model's max_seq_len 256"),
    "more steps than tokens": (["generate", PROMPT, "--steps", "1000"], "--steps 1000 is more than --gen-length 64"),
    "infinite temperature": (["generate", PROMPT, "--temperature", "inf"], "finite"),
    "infinite guidance": (["generate", PROMPT, "--cfg", "inf"], "finite"),
    "seed not an integer": (["generate", PROMPT, "--seed", "1e23"], "--seed"),
    "negative seed": (["generate", PROMPT, "--seed", "-1"], "--seed -1: expected a whole number"),
    "seed too large": (["generate", PROMPT, "--seed", "99999999999999999999"], "expected a whole number"),
    "causal model with a diffusion strategy": (["generate", PROMPT, "--model", "tiny-ar", "--strategy",
                                                "threshold:0.9", "--cache", "dual"],
                                               "--strategy, --cache: only for masked-diffusion models"),
    "eval of a causal model": (["eval", "--model", "tiny-ar", "--task", "sudoku"], "causal"),
    "bench of a causal model": (["bench", "--model", "tiny-ar"], "causal"),
    "bench beyond memory": (["bench", "--random", "llada-8b", "--batch-size", "100000"], "needs about"),
    "trace over a file": (["generate", PROMPT, "--trace", "{tmp}/exists.html"], "already exists; pass --force"),
    "trace through a link": (["generate", PROMPT, "--trace", "{tmp}/link.html", "--force"], "symbolic link"),
    "eval json over a file": (["eval", "--task", "sudoku", "--json", "{tmp}/exists.json"], "already exists"),
    "eval plot through a link": (["eval", "--task", "sudoku", "--plot", "{tmp}/link.png"], "symbolic link"),
    "bench json over a file": (["bench", "--json", "{tmp}/exists.json"], "already exists"),
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
    "joint without a head": (["generate", PROMPT, "--joint", "2"], "no sampler head"),
    "joint head of another model": (["generate", PROMPT, "--joint", "2", "--joint-head", "tiny"], "another model"),
    "joint that does not divide": (["generate", PROMPT, "--joint", "3", "--gen-length", "16"], "does not divide"),
    "joint larger than a block": (["generate", PROMPT, "--joint", "32", "--gen-length", "64", "--block-length", "16"],
                                  "--joint 32 gives 2 steps"),
    "joint with a causal model": (["generate", PROMPT, "--model", "tiny-ar", "--joint", "2"], "--joint: only for"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_error_line_and_exit_2(name, model, tmp_path):
    args, expected = BAD[name]
    hf = hf_directory(tmp_path)
    for existing in ("exists.html", "exists.json", "target.html", "target.png"):
        (tmp_path / existing).write_text("keep me")
    (tmp_path / "link.html").symlink_to(tmp_path / "target.html")
    (tmp_path / "link.png").symlink_to(tmp_path / "target.png")
    args = [a.format(hf=hf, tmp=tmp_path) for a in args]
    if args[0] == "generate" and "--model" not in args:
        args += ["--model", str(model)]
    out = jdlm(*args)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert expected in lines[0]
    assert out.stdout == ""
    assert "('tiny', 'tiny-ar')" not in lines[0]  # lists read as lists, not Python tuples
    assert all(f.read_text() == "keep me" for f in tmp_path.glob("*.*") if f.suffix in (".html", ".json", ".png"))


def test_generate_with_the_packaged_tiny_model_solves_a_sudoku():
    from jdlm.tasks import TASKS

    task = TASKS["sudoku"]
    example = task.generate("eval", 1, seed=3)[0]
    out = jdlm("generate", task.prompt(example.input).strip(), "--gen-length", "24", "--block-length", "8")
    assert out.returncode == 0, out.stderr
    assert task.score(example.input, out.stdout), out.stdout


def test_generate_with_the_packaged_head_reveals_k_tokens_per_forward():
    out = jdlm("generate", PROMPT, "--joint", "4", "--gen-length", "32", "--block-length", "16", "--no-eos-stop",
               "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["strategy"].endswith("joint:4") and result["nfe"] == 32 // 4


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
    command = [sys.executable, "-m", "jdlm", "generate", "--json", *FAST, "sudoku:\n1.3.\n.4.2\n2..3\n.1.4"]
    runs = [subprocess.run(command, capture_output=True, text=True, env=env, timeout=300) for _ in range(2)]
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
    # A shell starts background jobs (`pytest ... &`) with SIGINT ignored, and the child would inherit that: give it
    # the default disposition, as a terminal's foreground process has.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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


# ---------------------------------------------------------------- every example the CLI shows works


def help_texts() -> dict[str, str]:
    """Every --help text: the top level's and each command's."""
    from jdlm.cli import build_parser

    parser = build_parser()
    return {"jdlm": parser.format_help(), **{c: parser.commands[c].format_help() for c in COMMANDS}}


def examples_in(text: str) -> list[str]:
    """The command lines of a help text's example section ("examples:" or "start here"), continuations joined."""
    section = re.split(r"\n(?:examples:|start here[^\n]*:)\n", text, maxsplit=1)[-1].split("exit codes:")[0]
    lines = [line.strip() for line in section.replace("\\\n", " ").splitlines()]
    return [line for line in lines if re.search(r"(^|[|&;] *)jdlm ", line)]


def command_of(example: str) -> str:
    """An example line without its trailing comment."""
    return re.sub(r"\s+#[^'\"]*$", "", example)


def shown_examples() -> list[str]:
    """Every example of every --help, once (by its command, whatever the comment after it)."""
    examples = {}
    for text in help_texts().values():
        for example in examples_in(text):
            examples.setdefault(command_of(example), example)
    return list(examples.values())


def needs_a_large_model(example: str) -> bool:
    from jdlm.cli.examples import NEEDS_8B

    return NEEDS_8B in example


def test_examples_marked_as_needing_a_large_model_name_one():
    marked = [e for e in shown_examples() if needs_a_large_model(e)]
    assert marked  # the help does show what the big models need
    for example in marked:  # the mark cannot hide an example that should run with the packaged model
        command = command_of(example)
        assert "~/" in command or "--random llada-8b" in command, example


def run_example(example: str, cwd: Path) -> list[dict]:
    """Runs a help example in bash, with `jdlm` a function that runs `python -m jdlm` and records each call's
    arguments, stdin, stdout and exit code."""
    calls = cwd / ".calls"
    calls.mkdir()
    script = f"""set -o pipefail
jdlm() {{
  local d; d=$(mktemp -d -p "{calls}")
  printf '%s\\0' "$@" > "$d/args"; cat > "$d/stdin"
  "{sys.executable}" -m jdlm "$@" < "$d/stdin" > "$d/stdout" 2> "$d/stderr"; local rc=$?
  echo $rc > "$d/rc"; cat "$d/stdout"; return $rc
}}
{example}
"""
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300,
                         stdin=subprocess.DEVNULL, check=False)
    assert out.returncode == 0, f"{example}\n{out.stderr}"
    found = []
    for d in sorted(calls.iterdir()):
        found.append({"args": (d / "args").read_text().split("\0")[:-1], "stdin": (d / "stdin").read_text(),
                      "stdout": (d / "stdout").read_text(), "stderr": (d / "stderr").read_text(),
                      "rc": int((d / "rc").read_text())})
    assert found, f"{example} ran no jdlm command"
    return found


def score_task_answer(prompt: str, answer: str) -> None:
    """The prompt is one of the packaged model's task prompts and the answer solves it (the task's scorer)."""
    from jdlm.tasks import TASKS

    head, _, task_input = prompt.strip().partition("\n")
    assert head.endswith(":") and head[:-1] in TASKS, f"not a task prompt: {prompt!r}"
    assert TASKS[head[:-1]].score(task_input, answer), f"{prompt!r} -> {answer!r}"


def chat_messages(stdin: str) -> list[str]:
    """The messages of piped chat input: lines, where a trailing backslash continues onto the next line."""
    return [m.replace("\\\n", "\n") for m in re.split(r"(?<!\\)\n", stdin) if m.strip() and m != "/exit"]


@pytest.mark.parametrize("example", [e for e in shown_examples() if not needs_a_large_model(e)],
                         ids=lambda e: e[:70])
def test_every_help_example_works_with_the_shipped_models(example, tmp_path):
    from jdlm.cli import build_parser

    for call in run_example(example, tmp_path):
        assert call["rc"] == 0, call["stderr"]
        args = build_parser().parse_args(call["args"])
        if args.command == "generate":
            prompt = call["stdin"] if args.prompt in (None, "-") else args.prompt
            answer = json.loads(call["stdout"])["text"] if args.json else call["stdout"]
            score_task_answer(prompt, answer)
            assert "note:" not in call["stderr"]  # a task prompt needs no advice
        elif args.command == "chat":
            messages = chat_messages(call["stdin"])
            assert len(messages) <= 1, "score one message per chat example (replies are not delimited)"
            if messages:
                score_task_answer(messages[0], call["stdout"])
            else:
                assert call["stdout"] == ""
        else:
            assert call["stdout"].strip()


def test_a_prompt_the_packaged_model_was_not_trained_on_gets_one_note_with_working_examples():
    from jdlm.cli.examples import TASK_INPUTS

    out = jdlm("generate", "What is 2 + 2?", "--gen-length", "8", "--block-length", "8")
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("note:") == 1
    examples = [command_of(line.strip()) for line in out.stderr.splitlines() if line.strip().startswith("jdlm ")]
    assert [re.search(r"printf '(\w+):", e)[1] for e in examples] == list(TASK_INPUTS)  # one per task
    assert set(examples) <= {command_of(e) for e in shown_examples()}  # so the help test runs each of them


def test_every_task_prompt_is_recognised_and_free_text_is_not():
    from jdlm.cli.examples import is_task_prompt
    from jdlm.tasks import TASKS

    for name, task in TASKS.items():  # sudoku9, multistep, latin, ... too: the packaged models know them all
        example = task.generate("eval", 1, seed=0)[0]
        assert is_task_prompt(task.prompt(example.input)), name
    assert not is_task_prompt("What is 2 + 2?")
    assert not is_task_prompt("latin:\n")  # a task line with no input


def test_error_hints_show_a_working_example():
    out = jdlm("generate", "   ")
    hint = out.stderr.strip().split("e.g. ", 1)[1]
    assert out.returncode == 2 and hint in {command_of(e) for e in shown_examples()}


@pytest.mark.parametrize("task", ["sudoku", "arithmetic"])
def test_generate_with_the_causal_model_solves_held_out_tasks(task):
    """tiny-ar decodes greedily left to right (a diffusion decode of it gives garbage)."""
    from jdlm.eval.settings import TASK_SETTINGS
    from jdlm.tasks import TASKS

    example = TASKS[task].generate("eval", 1, seed=4)[0]
    out = jdlm("generate", "--model", "tiny-ar", TASKS[task].prompt(example.input).strip(), "--json",
               "--gen-length", str(TASK_SETTINGS[task].gen_length))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert TASKS[task].score(example.input, result["text"]), result["text"]
    assert result["strategy"] == "greedy" and result["nfe"] == len(result["token_ids"]) + 1  # the end token too
    assert result["reveal_step"] == list(range(1, len(result["token_ids"]) + 1))  # left to right, from pass 1


def test_inspect_says_how_a_model_decodes():
    causal, diffusion = (json.loads(jdlm("inspect", name, "--json").stdout) for name in ("tiny-ar", "tiny"))
    assert causal["decoding"] == "causal" and causal["config"]["causal"] is True
    assert diffusion["decoding"] == "masked diffusion" and diffusion["config"]["causal"] is False


# ---------------------------------------------------------------- inputs and outputs


def run_bytes(args: list, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jdlm", *args], input=stdin, capture_output=True, check=False,
                          env=ENV, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("where", ["stdin", "argument"])
def test_a_prompt_that_is_not_utf8_is_one_error_line(where, model):
    args = ["generate", "--model", str(model), *FAST]
    out = run_bytes(args + ["-"], b"caf\xe9\n") if where == "stdin" else run_bytes(args + [b"caf\xe9"])
    lines = out.stderr.decode().strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "not valid UTF-8 (byte 0xe9" in lines[0] and out.stdout == b""


def test_chat_skips_a_message_that_is_not_utf8(model):
    out = run_bytes(["chat", "--model", str(model), *FAST], b"caf\xe9\nhello\n")
    assert out.returncode == 0, out.stderr
    assert b"not valid UTF-8" in out.stderr and out.stderr.count(b"decoded ") == 1


@pytest.fixture()
def no_matplotlib(tmp_path) -> dict:
    """An environment in which `import matplotlib` fails, as without the [plot] extra."""
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    return {**ENV, "PYTHONPATH": os.pathsep.join([str(fake.parent), ENV["PYTHONPATH"]])}


@pytest.mark.parametrize("args", [["generate", PROMPT, *FAST, "--trace", "{tmp}/t.png"],
                                  ["eval", "--task", "sudoku", "--limit", "1", "--plot", "{tmp}/p.png"]],
                         ids=["trace", "plot"])
def test_missing_matplotlib_is_reported_before_any_decoding(args, model, tmp_path, no_matplotlib):
    args = [a.format(tmp=tmp_path) for a in args] + ["--model", str(model)]
    out = subprocess.run([sys.executable, "-m", "jdlm", *args], capture_output=True, text=True, env=no_matplotlib,
                         cwd=ROOT, timeout=120, check=False)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "needs matplotlib" in lines[0], out.stderr
    assert not list(tmp_path.glob("*.png"))


def test_force_replaces_an_output_file_atomically(model, tmp_path):
    trace = tmp_path / "trace.html"
    trace.write_text("old")
    inode = trace.stat().st_ino
    out = jdlm("generate", PROMPT, "--model", str(model), *FAST, "--trace", str(trace), "--force")
    assert out.returncode == 0, out.stderr
    assert trace.read_text(encoding="utf-8").startswith("<!doctype html>")
    assert trace.stat().st_ino != inode  # a new file renamed into place, not the old one rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.html"]  # no temporary file left behind


def test_png_trace_has_whole_step_ticks():
    pytest.importorskip("matplotlib")
    from jdlm.cli.viz import RevealTrace, trace_figure

    trace = RevealTrace(pieces=["a", "b", "c"], ids=[5, 6, 7], step=[0, 2, 1], confidence=[0.9, 0.5, 0.7],
                        special=[False] * 3, n_steps=3)
    figure = trace_figure(trace)
    for ax in figure.axes:  # the chart and its colour bar
        ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]
                 or ax.get_ylim()[1] <= t <= ax.get_ylim()[0]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_a_missing_model_fails_before_jax_is_imported():
    probe = ("import sys\n"
             "from jdlm.cli import main\n"
             "code = main(['generate', 'x', '--model', '/no/such/model'])\n"
             "print(code, 'jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, timeout=60,
                         check=False)
    assert out.stdout.split() == ["2", "False"], out.stderr


def test_memory_estimate_refuses_an_8b_model_in_float32_on_a_24gb_machine(monkeypatch):
    from jdlm.cli import memory
    from jdlm.config import llada_8b
    from jdlm.errors import UsageError

    monkeypatch.setattr(memory, "available_bytes", lambda: (24 * 10**9, "this machine"))
    with pytest.raises(UsageError, match=r"needs about 3\d\.\d GB .* use --dtype bfloat16 \(about 1\d\.\d GB\)"):
        memory.check_fits_memory(llada_8b(), "float32", "--random llada-8b", rows=1, seq_len=192)
    memory.check_fits_memory(llada_8b(), "bfloat16", "--random llada-8b", rows=1, seq_len=192)  # 16 GB fits


# ---------------------------------------------------------------- chat


def test_chat_reads_continued_lines_as_one_message(monkeypatch):
    from jdlm.cli.chat import read_message

    monkeypatch.setattr(sys, "stdin", io.StringIO("sudoku:\\\n0003\\\n1000\nnext\nlast\\\n"))
    assert [read_message(False) for _ in range(4)] == ["sudoku:\n0003\n1000", "next", "last", None]


def test_chat_refusing_a_long_message_keeps_the_conversation(model):
    long = "7 " * 200  # fits nothing: refused whatever the history
    out = jdlm("chat", "--model", str(model), *FAST, stdin=f"{'8 ' * 100}\n{long}\nok\n")
    assert out.returncode == 0, out.stderr
    assert "prompt too long" in out.stderr and out.stderr.count("decoded ") == 2
    assert "dropped" not in out.stderr  # the refusal gave up no earlier exchange


def with_chat_template(model: Path, tmp_path: Path, template: str) -> Path:
    copy = tmp_path / "templated"
    shutil.copytree(model, copy)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    # An edit on purpose: record it in the manifest, which load checks every file against.
    import hashlib

    manifest = json.loads((copy / "manifest.json").read_text())
    data = (copy / "tokenizer_config.json").read_bytes()
    manifest["files"]["tokenizer_config.json"] = hashlib.sha256(data).hexdigest()
    manifest["bytes"]["tokenizer_config.json"] = len(data)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_chat_keeps_a_failed_turn_out_of_the_conversation(model, tmp_path):
    refuses_boom = ("{% for m in messages %}{% if 'boom' in m['content'] %}{{ raise_exception('no boom') }}{% endif %}"
                    "<|user|>{{ m['content'] }}\n{% endfor %}<|assistant|>")
    out = jdlm("chat", "--model", str(with_chat_template(model, tmp_path, refuses_boom)), *FAST,
               stdin="boom\nhello\nagain\n")
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("chat template: no boom") == 1  # had "boom" stayed, every later turn would fail
    assert out.stderr.count("decoded ") == 2


def test_a_broken_chat_template_is_one_error_line(model, tmp_path):
    out = jdlm("generate", PROMPT, "--model", str(with_chat_template(model, tmp_path, "{% for %}")), *FAST)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "chat template" in lines[0] and "--no-chat" in lines[0], \
        out.stderr


def test_ctrl_d_in_chat_leaves_the_shell_prompt_on_a_fresh_line(model):
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "jdlm", "chat", "--model", str(model), *FAST],
                               stdin=follower, stdout=follower, stderr=follower, env=ENV, cwd=ROOT)
    os.close(follower)
    seen = b""

    def read_until(done, seconds: float = 120.0) -> None:
        nonlocal seen
        end = time.monotonic() + seconds
        while not done(seen) and time.monotonic() < end:
            if select.select([leader], [], [], 0.5)[0]:
                try:
                    seen += os.read(leader, 4096)
                except OSError:  # the process closed the terminal
                    return

    try:
        read_until(lambda text: b"you> " in text)
        os.write(leader, b"\x04")  # Ctrl-D at the prompt
        assert process.wait(timeout=60) == 0
        read_until(lambda text: False, seconds=1.0)
    finally:
        process.kill()
        os.close(leader)
    assert b"you> " in seen
    assert seen.split(b"you> ")[-1].startswith((b"\r\n", b"\n")), seen[-80:]
