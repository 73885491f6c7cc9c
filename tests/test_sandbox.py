"""jdlm.sandbox: harmless probes for each way out, on every backend this machine has, and candidates that try to
fake a pass. Where a backend is missing here, the tests check the documented fallback instead."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from jdlm import sandbox
from jdlm.errors import UsageError
from jdlm.eval import humaneval
from jdlm.tasks import TASKS

BOXES = {backend: sandbox.probe(backend) for backend in sandbox.BACKENDS}
FAST = sandbox.Limits(timeout_s=3.0)


def run_probe(box: sandbox.Containment, body: str, *calls: tuple, limits: sandbox.Limits = FAST):
    """The replies of `probe(*args)` for each args in `calls` (default one call without arguments)."""
    source = "import os, sys\n\ndef probe(*args):\n" + "".join(f"    {line}\n" for line in body.splitlines())
    return sandbox.call_function(source, "probe", calls or [()], limits=limits, box=box)


def processes_with(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line holds `marker`, seen from this machine's /proc."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def gone(marker: str, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while processes_with(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(params=sandbox.BACKENDS)
def box(request):
    """Each backend. One that does not work here is replaced by the weaker backend jdlm falls back to, whose
    description must name what is lost; the probes then check that fallback's documented behaviour."""
    if BOXES[request.param] is not None:
        return BOXES[request.param]
    detected = sandbox.containment()
    assert sandbox.BACKENDS.index(detected.backend) > sandbox.BACKENDS.index(request.param)
    missing = set(sandbox.PROTECTS[request.param]) - set(detected.protects)
    assert missing and all(sandbox.GAPS[p] in detected.describe() for p in missing)
    return detected


# ---------------------------------------------------------------------------------------------- detection

def test_detection_picks_the_best_backend_that_works_and_says_what_it_lacks():
    best = sandbox.containment()
    assert best.backend == next(b for b in sandbox.BACKENDS if BOXES[b] is not None)
    text = best.describe()
    assert text.startswith(f"sandbox: {best.backend} (")
    for protection, gap in sandbox.GAPS.items():
        assert (gap in text) == (protection not in best.protects)
    assert "reading any file you can read" in text
    assert ("RLIMIT_NPROC does not apply to root" in text) == (os.geteuid() == 0)
    assert BOXES["none"] is not None and BOXES["none"].protects == ()


def test_consent_comes_from_the_argument_or_the_environment(monkeypatch):
    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    with pytest.raises(UsageError, match="allow_code_execution=True.*JDLM_RUN_UNSAFE_CODE=1"):
        sandbox.check_allowed("the code task", None)
    sandbox.check_allowed("the code task", True)
    monkeypatch.setenv(sandbox.ALLOW_ENV, "1")
    sandbox.check_allowed("the code task", None)
    with pytest.raises(UsageError):
        sandbox.check_allowed("the code task", False)  # an explicit no wins over the environment


# ---------------------------------------------------------------------------------------------- probes, each backend

def test_scratch_folder_is_home_cwd_and_tmpdir_then_removed(box, monkeypatch):
    monkeypatch.setenv("JDLM_TEST_SECRET", "do-not-leak")
    [reply] = run_probe(box, "open('left.txt', 'w').write('x')\n"
                             "return os.getcwd(), os.environ['HOME'], os.environ['TMPDIR'], sorted(os.environ)")
    cwd, home, tmpdir, names = reply.value
    assert reply.ok and cwd == home == tmpdir and Path(cwd).name == "scratch"
    assert "JDLM_TEST_SECRET" not in names and set(names) <= {"HOME", "LANG", "PATH", "PWD", "TMPDIR"}  # bwrap: PWD
    assert not Path(cwd).parent.exists()


def test_write_outside_the_scratch_folder(box, tmp_path):
    target = tmp_path / "escaped.txt"
    [reply] = run_probe(box, f"try:\n    open({str(target)!r}, 'w').write('escaped')\n    return 'written'\n"
                             "except OSError as e:\n    return type(e).__name__")
    if "filesystem" in box.protects:
        assert reply.value == "OSError" and not target.exists()
    else:  # documented: not contained without bubblewrap
        assert reply.value == "written" and target.read_text() == "escaped"
        assert "writes outside the scratch folder" in box.describe()


def test_connect_to_a_local_server(box):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received = []

    def accept_one():
        conn, _ = server.accept()
        received.append(conn.recv(16))
        conn.close()

    thread = threading.Thread(target=accept_one)
    thread.start()
    [reply] = run_probe(box, "import socket\ntry:\n"
                             f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hello')\n"
                             "    return 'connected'\nexcept OSError as e:\n    return type(e).__name__")
    with contextlib.suppress(OSError):  # the first connection to arrive is the one the server reads
        socket.create_connection(("127.0.0.1", port), timeout=2).sendall(b"from the test")
    thread.join()
    server.close()
    if "network" in box.protects:
        assert reply.ok and reply.value != "connected" and received == [b"from the test"]
    else:  # documented: no network namespace here
        assert reply.value == "connected" and received == [b"hello"]
        assert "network access" in box.describe()


def test_processes_started_by_the_program_end_with_the_run(box):
    marker = f"jdlm-probe-{os.getpid()}-{time.monotonic_ns()}"
    sleeper = f"[sys.executable, '-I', '-S', '-c', 'import time; time.sleep(30)', {marker!r} + '-' + kind]"
    body = ("def spawn(kind):\n"
            "    if os.fork() == 0:\n"
            "        if kind == 'setsid':\n"
            "            os.setsid()\n"
            f"        os.execv(sys.executable, {sleeper})\n"
            "spawn('group')\nspawn('setsid')\nreturn 'forked'")
    [reply] = run_probe(box, body)
    assert reply.value == "forked"
    assert gone(marker + "-group")  # the process group is killed on every backend
    if "processes" in box.protects:
        assert gone(marker + "-setsid")
    else:  # documented: a program that leaves the group outlives the run without a PID namespace
        time.sleep(0.3)
        escaped = processes_with(marker + "-setsid")
        for pid in escaped:
            os.kill(pid, 9)
        assert escaped and sandbox.GAPS["processes"] in box.describe()


def test_rlimits_are_set_and_hold(box):
    limits = sandbox.Limits(timeout_s=3.0, memory_bytes=512 << 20, file_bytes=1 << 20)
    body = ("import resource\n"
            "if args[0] == 'limits':\n"
            "    return [resource.getrlimit(getattr(resource, n))[0] for n in ('RLIMIT_AS', 'RLIMIT_CPU', "
            "'RLIMIT_FSIZE', 'RLIMIT_CORE')]\n"
            "if args[0] == 'allocate':\n"
            "    return len(bytearray(1 << 30))\n"
            "with open('big', 'wb') as f:\n"
            "    try:\n"
            "        f.write(bytes(2 << 20))\n"
            "    except OSError as e:\n"
            "        return type(e).__name__\n"
            "return 'wrote 2 MiB'")
    got_limits, allocate, write = run_probe(box, body, ("limits",), ("allocate",), ("write",), limits=limits)
    assert got_limits.value == [512 << 20, 4, 1 << 20, 0]
    assert not allocate.ok and allocate.value.startswith("MemoryError")
    assert write.value == "OSError"


def test_process_count(box):
    body = ("import time\nforked = 0\n"
            "for _ in range(24):\n"
            "    try:\n"
            "        if os.fork() == 0:\n"
            "            time.sleep(1)\n"
            "            os._exit(0)\n"
            "    except OSError:\n"
            "        break\n"
            "    forked += 1\n"
            "return forked")
    [reply] = run_probe(box, body, limits=sandbox.Limits(timeout_s=3.0, processes=8))
    if os.geteuid() == 0:  # documented: RLIMIT_NPROC does not apply to root
        assert reply.value == 24 and "RLIMIT_NPROC does not apply to root" in box.describe()
    else:
        assert reply.value < 24


def test_an_endless_loop_is_stopped_at_the_timeout(box):
    start = time.monotonic()
    assert run_probe(box, "while True:\n    pass", limits=sandbox.Limits(timeout_s=1.0)) is None
    assert time.monotonic() - start < 3.0


# ---------------------------------------------------------------------------------------------- faking a pass

WRONG_ADD = "def add(x):\n    return x + 4\n"
CHEATS = {
    # the old harness printed a random token at the end: read it from the caller's code and print it
    "read-token": "def add(x):\n    import os, sys\n    frame = sys._getframe(1)\n"
                  "    tokens = [c for c in frame.f_code.co_consts if isinstance(c, str) and len(c) == 16\n"
                  "              and set(c) <= set('0123456789abcdef')]\n"
                  "    out = frame.f_globals.get('out', sys.__stdout__)\n"
                  "    out.write(''.join(tokens))\n    out.flush()\n    os._exit(0)\n",
    "os-exit": "import os\nos._exit(0)\n",
    "sys-exit": "def add(x):\n    import sys\n    sys.exit(0)\n",
    "patch-builtins": "import builtins\nclass Anything(int):\n    def __eq__(self, other):\n        return True\n"
                      "    __hash__ = int.__hash__\nbuiltins.type = lambda obj: int\nbuiltins.repr = lambda obj: '3'\n"
                      "def add(x):\n    return Anything(0)\n",
    "fake-replies": "import os\ndef add(x):\n    for fd in range(1, 8):\n        try:\n"
                    "            os.write(fd, b'passed\\n' + b'ok 3\\n' * 20)\n"
                    "        except OSError:\n            pass\n"
                    "    print('passed')\n    os._exit(0)\n",
    # once the judge has written its verdict to its output file (reachable by name without bubblewrap), replace it
    "forge-verdict": "import glob, os, time\ndef add(x):\n    if os.fork() == 0:\n        os.setsid()\n"
                     "        mine = os.path.dirname(os.getcwd())\n"
                     "        runs = [d for d in glob.glob(os.path.join(os.path.dirname(mine), 'jdlm-sandbox-*'))\n"
                     "                if d != mine]\n"
                     "        target = os.path.join(max(runs, key=os.path.getmtime), 'verdict')\n"
                     "        end = time.time() + 2\n"
                     "        while os.path.exists(target) and time.time() < end:\n"
                     "            try:\n"
                     "                if open(target).read().startswith('failed'):\n"
                     "                    with open(target, 'w') as f:\n"
                     "                        f.write('passed\\n')\n"
                     "            except OSError:\n                pass\n"
                     "        os._exit(0)\n    return x + 4\n",
    "exit-in-finally": "def add(x):\n    try:\n        return x + 4\n    finally:\n        raise SystemExit(0)\n",
    # the old harness held the expected value in a variable of the calling frame
    "read-the-caller": "def add(x):\n    import sys\n    frame = sys._getframe(1)\n"
                       "    return frame.f_locals.get('want', frame.f_globals.get('want', x + 4))\n",
}


def test_a_right_answer_passes_despite_noise():
    assert TASKS["code"].score("add(x): return x plus 3", "def add(x):\n    print('ok 0')\n    return x + 3")
    assert not TASKS["code"].score("add(x): return x plus 3", WRONG_ADD)


@pytest.mark.parametrize("cheat", sorted(CHEATS))
def test_code_task_cheats_fail(cheat):
    assert TASKS["code"].score("add(x): return x plus 3", CHEATS[cheat]) is False


ADD_TEST = "def check(candidate):\n    assert candidate(1) == 4\n    assert candidate(-3) == 0\n"
ADD_PROMPT = "def add(x):\n    \"\"\"x plus 3\"\"\"\n"


def test_humaneval_judge_passes_right_and_fails_wrong():
    problem = {"task_id": "t", "prompt": ADD_PROMPT, "entry_point": "add", "test": ADD_TEST}
    right, wrong = humaneval.check_completions([problem, problem], ["    return x + 3\n", "    return x + 4\n"])
    assert (right["passed"], right["result"]) == (True, "passed")
    assert (wrong["passed"], wrong["result"]) == (False, "failed: AssertionError")


@pytest.mark.parametrize("cheat", sorted(CHEATS))
def test_humaneval_cheats_fail(box, cheat):
    passed, result = sandbox.check_function(CHEATS[cheat], "add", ADD_TEST, context=humaneval.helpers(ADD_PROMPT),
                                            limits=FAST, box=box)
    assert passed is False and result.startswith("failed: ")


def test_humaneval_programs_end_with_the_run():
    box = sandbox.containment()
    marker = f"jdlm-probe-he-{os.getpid()}-{time.monotonic_ns()}"
    source = ("import os, sys\ndef add(x):\n    if os.fork() == 0:\n        os.setsid()\n"
              f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', {marker!r}])\n"
              "    return x + 3\n")
    assert sandbox.check_function(source, "add", "def check(c):\n    assert c(1) == 4\n", limits=FAST) == (
        True, "passed")
    if "processes" in box.protects:
        assert gone(marker)
    else:
        escaped = processes_with(marker)
        for pid in escaped:
            os.kill(pid, 9)
        assert escaped
