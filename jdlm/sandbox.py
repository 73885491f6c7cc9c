"""Runs model-written Python contained, and decides pass/fail outside the process that runs it.

The functions here run what they are given. The entry points that decode and then run what a model wrote (`jdlm
eval`, `evaluate`, `sweep`, `evaluate_humaneval`) first ask for consent (`check_allowed`): `jdlm eval
--confirm-run-unsafe-code`, `allow_code_execution=True` in the Python API, or the environment variable
JDLM_RUN_UNSAFE_CODE=1.

Every program (`_Run`) gets:
  * a fresh scratch folder as its working directory, HOME and TMPDIR, removed afterwards, and an environment that
    holds only those (none of the user's variables);
  * its own session and process group (`start_new_session`), killed as a whole on timeout and after scoring;
  * rlimits, set before any candidate code runs: address space, CPU seconds, file size, number of processes
    (RLIMIT_NPROC: at most `Limits.processes` more than the user runs already; the kernel does not apply it to
    root), no core files;
  * the best isolation this machine allows, detected once (`containment`):
      bwrap    bubblewrap: new user, network, PID, IPC and UTS namespaces, no capabilities, the whole filesystem
               bound read-only except the scratch folder; the sandbox dies with its parent.
      unshare  `unshare --user --map-root-user --net --pid --fork --mount-proc --ipc --kill-child`: no network, a
               PID namespace (every process the program starts dies with it), but the filesystem stays writable.
      none     the scratch folder, the process group and the rlimits only.

How pass/fail is decided. A program that runs in the scoring process can fake any verdict that process computes:
it can read a pass token from its caller's frame, patch `type` or `==`, print what the harness prints, exit with
status 0 or raise SystemExit from a `finally`. So the candidate runs alone in a *function server* (`SERVER`): it
executes the candidate's source, then answers call requests `(args, kwargs)`, one per line, with `ok repr(result)`
or `error repr(message)`. The server never sees an expected value or a test. A *judge* outside it decides:
  * the code task: this process, against expected values from jdlm's own reference (`call_function`);
  * HumanEval: a second sandboxed process (`JUDGE`) that holds no candidate code; it runs the problem's
    `check(candidate)` with a proxy that forwards each call to the server over a pipe (`check_function`). Its exit
    status is the verdict: files and output streams can be reached by name from a weaker sandbox, exit statuses
    cannot.
The judge reads each reply with `ast.literal_eval`, so only plain values (numbers, strings, bytes, None, tuples,
lists, dicts, sets) cross: an object whose `==` always holds cannot. Whatever the candidate does to its own process
only changes the values it returns, and to pass it must return the right ones. Its exit status and output are
ignored; a missing, extra or malformed reply fails.

Not contained (also in the README, "Running generated code"): reading any file the user can read; with `unshare`
or `none`, writes outside the scratch folder; with `none`, the network, signals or traces to the user's other
processes (the judge's included), and processes that leave the process group; as root, the number of processes.
The CLI prints what this machine lacks (`Containment.describe`).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from jdlm.errors import UsageError

ALLOW_ENV = "JDLM_RUN_UNSAFE_CODE"
REPLY_CHARS = 1 << 20  # longest reply line read from a candidate

# Sets the rlimits given as JSON in argv[1]; reports on stderr any the platform refuses (read by `containment`).
PRELUDE = """\
import ast, json, os, resource, sys
for name, value in json.loads(sys.argv[1]).items():
    try:
        kind = getattr(resource, name)
        hard = resource.getrlimit(kind)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)  # only root may raise a hard limit
        resource.setrlimit(kind, (value, value))
    except (AttributeError, ValueError, OSError):
        print("unlimited", name, file=sys.stderr)
"""

# The function server: loads program.py, then answers one request line with one reply line, until its stdin ends.
SERVER = PRELUDE + """\
requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
os.dup2(os.open(os.devnull, os.O_RDWR), 0)
os.dup2(0, 1)
sys.stdin, sys.stdout = open(os.devnull), open(os.devnull, "w")  # the candidate's own input and prints
try:
    namespace = {"__name__": "candidate"}
    exec(compile(open("program.py", encoding="utf-8").read(), "program.py", "exec"), namespace)
    function = namespace[sys.argv[2]]
except BaseException as e:
    replies.write("error " + repr(f"cannot load the program: {type(e).__name__}: {e}") + "\\n")
    replies.flush()
    os._exit(1)
for line in requests:
    try:
        args, kwargs = ast.literal_eval(line)
        reply = "ok " + repr(function(*args, **kwargs))
    except BaseException as e:
        reply = "error " + repr(f"{type(e).__name__}: {e}")
    replies.write(reply + "\\n")
    replies.flush()
"""

# The HumanEval judge: the prompt's helpers and the tests, with the candidate replaced by a proxy to the server.
JUDGE = PRELUDE + """\
spec = json.load(open("spec.json", encoding="utf-8"))
to_server = os.fdopen(spec["to_server"], "w", encoding="utf-8")
from_server = os.fdopen(spec["from_server"], "r", encoding="utf-8")

class CandidateFailed(Exception):
    pass

def candidate(*args, **kwargs):
    to_server.write(repr((args, kwargs)) + "\\n")
    to_server.flush()
    line = from_server.readline(spec["reply_chars"])
    status, _, payload = line.partition(" ")
    if not line.endswith("\\n") or status not in ("ok", "error"):
        raise CandidateFailed("the candidate stopped answering")
    value = ast.literal_eval(payload)  # plain values only
    if status == "error":
        raise CandidateFailed(value)
    return value

try:
    namespace = {"__name__": "tests"}
    exec(compile(spec["context"], "prompt", "exec"), namespace)
    namespace[spec["entry_point"]] = candidate
    exec(compile(spec["test"], "test", "exec"), namespace)
    namespace["check"](candidate)
except BaseException as e:
    print(f"failed: {type(e).__name__} {e}".strip()[:500])
    sys.exit(1)
print("passed")
"""


# ---------------------------------------------------------------------------------------------- permission

def code_execution_allowed(allow: bool | None = None) -> bool:
    """`allow` when given, else whether the environment sets JDLM_RUN_UNSAFE_CODE=1."""
    return bool(allow) if allow is not None else os.environ.get(ALLOW_ENV) == "1"


def check_allowed(what: str, allow: bool | None) -> None:
    """Raises UsageError unless running model-written code was allowed (see `code_execution_allowed`)."""
    if not code_execution_allowed(allow):
        raise UsageError(f"{what} runs model-written code; pass allow_code_execution=True (or set {ALLOW_ENV}=1) "
                         "to run it in jdlm's sandbox (README: Running generated code)")


# ---------------------------------------------------------------------------------------------- what is contained

@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """Per program: wall-clock seconds, bytes of address space, bytes per written file, and processes (or threads)
    it may start beyond those the user runs already."""

    timeout_s: float = 5.0
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    processes: int = 16

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if not getattr(self, field.name) > 0:
                raise ValueError(f"Limits.{field.name} must be positive, got {getattr(self, field.name)!r}")

    def rlimits(self) -> dict[str, int]:
        """The rlimits the prelude sets, by `resource` name."""
        return {"RLIMIT_AS": self.memory_bytes, "RLIMIT_CPU": math.ceil(self.timeout_s) + 1,
                "RLIMIT_FSIZE": self.file_bytes, "RLIMIT_NPROC": _user_tasks() + self.processes, "RLIMIT_CORE": 0}


BACKENDS = ("bwrap", "unshare", "none")  # best first
PROTECTS = {"bwrap": ("network", "filesystem", "processes"), "unshare": ("network", "processes"), "none": ()}
GAPS = {
    "network": "network access, local servers included (bubblewrap is not installed and `unshare -rn` is not "
               "permitted here)",
    "filesystem": "writes outside the scratch folder (install bubblewrap: apt-get install bubblewrap)",
    "processes": "your other processes can be signalled, and processes that leave the run's process group (setsid) "
                 "outlive it (no PID namespace)",
}


@dataclasses.dataclass(frozen=True)
class Containment:
    """What programs run with `backend` are kept from: `protects` holds "network", "filesystem", "processes"."""

    backend: str
    unlimited: tuple[str, ...] = ()  # rlimits the platform refused

    @property
    def protects(self) -> tuple[str, ...]:
        return PROTECTS[self.backend]

    def not_contained(self) -> list[str]:
        """One phrase per thing a program can still do."""
        gaps = [GAPS[p] for p in GAPS if p not in self.protects] + ["reading any file you can read"]
        if os.geteuid() == 0:
            gaps.append("the number of processes (RLIMIT_NPROC does not apply to root)")
        return gaps + [f"{name} (refused by this platform)" for name in self.unlimited]

    def describe(self) -> str:
        """One line for the user: the sandbox in use and what it does not contain."""
        kept = ["scratch folder", "rlimits"] + [{"network": "no network", "filesystem": "read-only filesystem",
                                                 "processes": "processes end with the run"}[p] for p in self.protects]
        return f"sandbox: {self.backend} ({', '.join(kept)}); NOT contained: {'; '.join(self.not_contained())}"


@functools.cache
def containment() -> Containment:
    """The best backend that works on this machine (tried once per process)."""
    return next(filter(None, map(probe, BACKENDS)), Containment("none"))


def probe(backend: str) -> Containment | None:
    """`backend`'s Containment if it can run a Python program here, else None."""
    if backend != "none" and shutil.which(backend) is None:
        return None
    limits = Limits(timeout_s=10.0)
    with _Run(Containment(backend)) as run:
        try:
            with open(run.root / "stderr", "wb") as err:
                process = run.start(PRELUDE, limits, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        except OSError:
            return None
        finished = _wait_unreaped(process.pid, time.monotonic() + limits.timeout_s)
        run.kill()
        refused = [line.split()[1] for line in (run.root / "stderr").read_text(errors="replace").splitlines()
                   if line.startswith("unlimited ")]
    return Containment(backend, tuple(refused)) if finished and process.returncode == 0 else None


def _user_tasks() -> int:
    """Processes and threads of this user (RLIMIT_NPROC counts them all); 0 for root or without /proc."""
    uid = os.getuid()
    if uid == 0:
        return 0  # not enforced for root anyway: skip the scan
    tasks = 0
    for status in glob.glob("/proc/[0-9]*/status"):
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
            fields = dict(line.split(":", 1) for line in Path(status).read_text().splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                tasks += int(fields["Threads"])
    return tasks


# ---------------------------------------------------------------------------------------------- one program

class _Run:
    """A scratch folder and the processes started in it; on exit every process group is killed, the folder removed.

    Layout: `root/scratch` is the program's working directory (the only writable place under bwrap); `root` also
    holds this side's files (requests, replies, verdict).
    """

    def __init__(self, box: Containment):
        self.box = box
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> "_Run":
        self.root = Path(tempfile.mkdtemp(prefix="jdlm-sandbox-"))
        self.scratch = self.root / "scratch"
        self.scratch.mkdir()
        return self

    def start(self, program: str, limits: Limits, *extra_args: str, stdin, stdout, stderr=subprocess.DEVNULL,
              pass_fds: Sequence[int] = ()) -> subprocess.Popen:
        """Starts `python -I -S -c program rlimits-json *extra_args` in the sandbox."""
        command = [*self._wrapper(), sys.executable, "-I", "-S", "-c", program, json.dumps(limits.rlimits()),
                   *extra_args]
        scratch = str(self.scratch)
        env = {"HOME": scratch, "TMPDIR": scratch, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        process = subprocess.Popen(command, cwd=scratch, env=env, stdin=stdin, stdout=stdout, stderr=stderr,
                                   pass_fds=tuple(pass_fds), start_new_session=True)
        self.processes.append(process)
        return process

    def _wrapper(self) -> list[str]:
        scratch = str(self.scratch)
        if self.box.backend == "bwrap":
            return [shutil.which("bwrap"), "--unshare-all", "--unshare-user", "--cap-drop", "ALL", "--die-with-parent",
                    "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--bind", scratch, scratch, "--"]
        if self.box.backend == "unshare":
            return [shutil.which("unshare"), "--user", "--map-root-user", "--net", "--pid", "--fork", "--mount",
                    "--mount-proc", "--ipc", "--kill-child", "--"]
        return []

    def kill(self) -> None:
        """Kills every process group started here (with a PID namespace: every process) and reaps the leaders."""
        for process in self.processes:
            _kill_group(process.pid)
        for process in self.processes:
            process.wait()

    def __exit__(self, *exc) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Waits until process `pid` exits or `deadline` (time.monotonic) passes; True if it exited.

    The exited process is left unreaped, so its process group id cannot be reused before we kill the group.
    """
    pause = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(2 * pause, 0.02)
    return True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, 9)


# ---------------------------------------------------------------------------------------------- judging

@dataclasses.dataclass(frozen=True)
class Reply:
    """One call's outcome: `ok` and the returned plain value, or not `ok` and the error message."""

    ok: bool
    value: Any


def call_function(source: str, name: str, calls: Sequence[tuple], *, limits: Limits = Limits(),
                  box: Containment | None = None) -> list[Reply] | None:
    """Runs `source` in the sandbox and calls its function `name(*args)` for each args tuple of `calls`.

    Returns one Reply per call, in order, or None when the program did not answer every call in time (a timeout,
    a crash, an exit, a missing or malformed reply). Values are parsed here with `ast.literal_eval`: plain only.
    """
    with _Run(box or containment()) as run:
        (run.scratch / "program.py").write_text(source, encoding="utf-8", errors="backslashreplace")
        (run.root / "requests").write_text("".join(repr((tuple(args), {})) + "\n" for args in calls),
                                           encoding="utf-8")
        with open(run.root / "requests", "rb") as requests, open(run.root / "replies", "wb") as replies:
            server = run.start(SERVER, limits, name, stdin=requests, stdout=replies)
            finished = _wait_unreaped(server.pid, time.monotonic() + limits.timeout_s)
        run.kill()  # before reading: nothing the program started may still write
        with open(run.root / "replies", encoding="utf-8", errors="replace") as replies:
            text = replies.read(REPLY_CHARS * max(1, len(calls)))
    lines = text.split("\n")[:-1]  # every reply ends with a newline: a cut-off last one is dropped
    if not finished or len(lines) != len(calls):
        return None
    parsed = [_parse_reply(line) for line in lines]
    return None if None in parsed else parsed


def _parse_reply(line: str) -> Reply | None:
    status, _, payload = line.partition(" ")
    if status not in ("ok", "error") or len(line) > REPLY_CHARS:
        return None
    try:
        return Reply(status == "ok", ast.literal_eval(payload))
    except Exception:  # anything but a literal (or one too deep to parse): the reply is malformed
        return None


def check_function(source: str, entry_point: str, test: str, *, context: str = "", limits: Limits = Limits(),
                   box: Containment | None = None) -> tuple[bool, str]:
    """Runs `test`'s `check(candidate)` in a judge process against `entry_point` of `source` run in another.

    `context` is run in the judge before the tests (HumanEval's prompt: helpers the tests call). Returns (passed,
    "passed" / "timed out" / "failed: ..."), decided by the judge, which holds no candidate code.
    """
    box = box or containment()
    with _Run(box) as server_run, _Run(box) as judge_run:
        (server_run.scratch / "program.py").write_text(source, encoding="utf-8", errors="backslashreplace")
        to_server_r, to_server_w = os.pipe()
        from_server_r, from_server_w = os.pipe()
        spec = {"context": context, "test": test, "entry_point": entry_point, "to_server": to_server_w,
                "from_server": from_server_r, "reply_chars": REPLY_CHARS}
        (judge_run.scratch / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        deadline = time.monotonic() + limits.timeout_s
        try:
            server_run.start(SERVER, limits, entry_point, stdin=to_server_r, stdout=from_server_w)
            with open(judge_run.root / "verdict", "wb") as verdict:
                judge = judge_run.start(JUDGE, limits, stdin=subprocess.DEVNULL, stdout=verdict,
                                        pass_fds=(to_server_w, from_server_r))
        finally:
            for fd in (to_server_r, to_server_w, from_server_r, from_server_w):
                os.close(fd)
        finished = _wait_unreaped(judge.pid, deadline)
        judge_run.kill()
        server_run.kill()
        message = (judge_run.root / "verdict").read_text(encoding="utf-8", errors="replace").strip()
    if not finished:
        return False, "timed out"
    if judge.returncode == 0:
        return True, "passed"
    return False, message if message.startswith("failed: ") else f"failed: the judge ended with {judge.returncode}"
