"""Sandbox acceptance: loops, memory bombs, forks, sockets are stopped and scored as failures, and the
test process is unharmed; correct code passes, wrong code fails."""

import os
import platform
import time

import pytest

from lmlab.eval.code.problems import mini_humaneval
from lmlab.eval.code.sandbox import SandboxConfig, check_completion, evaluate_samples, run_program

CFG = SandboxConfig(timeout_s=2.0, memory_mb=256)
LINUX_SECCOMP = platform.system() == "Linux" and platform.machine() in ("x86_64", "aarch64")


def run(src):
    return run_program(src, CFG)


def test_correct_passes_and_wrong_fails():
    ok = run("def f(x):\n    return x + 1\nassert f(1) == 2\nprint('hello')\n")
    assert ok.status == "passed" and ok.passed and ok.returncode == 0
    assert ok.stdout.strip() == "hello"  # the runner's success token is stripped from the output
    bad = run("def f(x):\n    return x - 1\nassert f(1) == 2, 'off by two'\n")
    assert bad.status == "failed" and "AssertionError: off by two" in bad.reason


def test_infinite_loop_times_out_fast():
    start = time.monotonic()
    res = run("while True:\n    pass\n")
    assert res.status == "timeout"
    assert time.monotonic() - start < 5.0


def test_sleeping_children_are_killed_with_the_group():
    res = run("import time\ntime.sleep(60)\n")
    assert res.status == "timeout"


def test_unbounded_allocation_is_stopped():
    res = run("chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))\n")
    assert res.status in ("failed", "error") and not res.passed
    assert "MemoryError" in res.reason or "signal" in res.reason


@pytest.mark.parametrize("src", [
    "import os\npid = os.fork()\nprint(pid)\n",
    "import posix\nprint(posix.fork())\n",
    "import subprocess\nsubprocess.run(['sleep', '30'])\n",
    "import subprocess\nsubprocess.Popen(['sleep', '30'])\n",
    "import multiprocessing\np = multiprocessing.Process(target=print)\np.start()\np.join()\n",
    "import os\nos.system('sleep 30')\n",
])
def test_process_creation_is_refused(src):
    res = run(src)
    assert res.status == "failed" and "sandbox:" in res.reason and "disabled" in res.reason


@pytest.mark.skipif(not LINUX_SECCOMP, reason="kernel-level fork block needs seccomp on Linux x86_64/aarch64")
def test_fork_through_ctypes_is_refused_by_the_kernel():
    src = ("import ctypes, time\npid = ctypes.CDLL(None).fork()\nif pid == 0:\n    time.sleep(30)\n"
           "assert pid > 0, 'fork refused'\n")
    res = run(src)
    if "seccomp" not in res.guards:
        pytest.skip("seccomp filter not available here")
    assert res.status == "failed" and "fork refused" in res.reason


@pytest.mark.parametrize("src, refusal", [
    ("import socket\ns = socket.socket()\ns.connect(('93.184.216.34', 80))\n", "socket.socket"),
    ("import socket\nsocket.create_connection(('93.184.216.34', 80), timeout=1)\n", "socket.create_connection"),
    ("import _socket\ns = _socket.socket(2, 1)\ns.connect(('93.184.216.34', 80))\n", "_socket.socket"),
])
def test_sockets_are_refused(src, refusal):
    """The sandbox's own refusal, not the offline host's: an unreachable network would raise OSError at
    connect, never this PermissionError at construction."""
    res = run(src)
    assert res.status == "failed" and not res.passed
    assert f"PermissionError: sandbox: {refusal} is disabled" in res.reason, res.reason


@pytest.mark.parametrize("seccomp", ["auto", False])
def test_network_namespace_or_seccomp_blocks_raw_sockets(seccomp):
    """Even a socket made below the Python patches cannot reach the network, and the refusal is the sandbox's:
    seccomp refuses an AF_INET socket with EACCES; without seccomp, Landlock refuses the TCP connect with
    EACCES; an empty network namespace alone has no route (an offline host would create the socket and fail
    only at connect, with ENETUNREACH or ECONNREFUSED -- never EACCES)."""
    src = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nfd = libc.socket(2, 1, 0)\n"
           "assert fd >= 0, 'socket refused: ' + os.strerror(ctypes.get_errno())\n"
           "addr = bytes([2, 0, 0, 80, 93, 184, 216, 34]) + bytes(8)\n"
           "rc = libc.connect(fd, addr, 16)\n"
           "assert rc == 0, 'connect refused: ' + os.strerror(ctypes.get_errno())\n")
    res = run_program(src, SandboxConfig(timeout_s=2.0, memory_mb=256, seccomp=seccomp))
    guards = set(res.guards)
    if not {"seccomp", "netns", "landlock"} & guards:
        pytest.skip("neither seccomp, Landlock nor a network namespace is available here")
    assert res.status == "failed"
    if "seccomp" in guards:
        expected = "socket refused: Permission denied"
    elif "landlock" in guards:
        expected = "connect refused: Permission denied"
    else:
        expected = "connect refused: Network is unreachable"
    assert expected in res.reason, (res.reason, guards)


def test_exit_zero_cannot_fake_a_pass():
    for src in ("import sys\nsys.exit(0)\nassert False\n", "import os\nos._exit(0)\n"):
        res = run(src)
        assert res.status == "failed", src


def test_output_is_bounded():
    res = run_program("while True:\n    print('x' * 1000)\n", SandboxConfig(timeout_s=2.0, max_output_bytes=4096))
    assert res.status == "error" and "output limit" in res.reason
    assert len(res.stdout) <= 4096


def test_destructive_file_calls_are_refused(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    res = run(f"import os\nos.remove({str(victim)!r})\n")
    assert res.status == "failed" and victim.exists()


def test_test_process_survives_and_mini_humaneval_scores():
    problems = mini_humaneval()
    assert 5 <= len(problems) <= 10
    bomb = "    import os\n    while True:\n        os.fork()\n"
    samples = {p.task_id: [p.canonical_solution, "    return None\n", bomb] for p in problems}
    result = evaluate_samples(problems, samples, ks=(1, 2, 3), config=CFG, workers=2)
    for tid, outcomes in result.outcomes().items():
        assert outcomes == [True, False, False], tid
    assert result.pass_at_k["pass@1"] == pytest.approx(1 / 3)
    assert result.pass_at_k["pass@2"] == pytest.approx(2 / 3)
    assert result.pass_at_k["pass@3"] == pytest.approx(1.0)
    assert os.getpid() > 0  # still here
    assert check_completion(problems[0], problems[0].canonical_solution, CFG).passed


def test_writes_stay_in_the_programs_own_directory(tmp_path):
    outside = tmp_path / "outside.txt"
    src = (f"import os\nopen(os.devnull, 'w').write('x')\nopen('scratch.txt', 'w').write('ok')\n"
           f"try:\n    open({str(outside)!r}, 'w').write('escaped')\nexcept PermissionError as exc:\n"
           f"    print('outside:', exc.strerror)\n")
    res = run(src)
    if "landlock" not in res.guards:
        pytest.skip("no Landlock on this kernel")
    assert res.passed and "outside: Permission denied" in res.stdout, (res.reason, res.stdout)
    assert not outside.exists()
