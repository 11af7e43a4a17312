"""Run untrusted generated code in separate, limited processes and report passed/failed/timeout/error.

Why: pass@k executes model-written code. Each sandboxed interpreter is a fresh ``python -I -B`` (isolated:
no user site, no PYTHON* variables, no bytecode writes) running :mod:`lmlab.eval.code.sandbox_child`, in
its own temporary directory and its own session (process group), with these layers, each of which alone
stops the usual accidents:

* wall clock: ``timeout_s``; on expiry the whole process group is SIGKILLed. The group is also swept
  after every normal exit, so a stray child never outlives its program;
* ``RLIMIT_AS`` (memory), ``RLIMIT_CPU`` (CPU seconds), ``RLIMIT_FSIZE`` (stdout/stderr are files, so
  this bounds output too), ``RLIMIT_CORE`` = 0;
* privileges: untrusted code runs without capabilities and, where the kernel has Landlock, in a domain
  that cannot reach other processes (``/proc/PID/mem``, ``ptrace``, signals) and writes only its own directory;
* network: a new, empty network namespace when the kernel allows it (root here), so even a raw
  socket has nowhere to go; the seccomp filter refuses non-AF_UNIX sockets; Python's ``socket``
  constructors are patched to raise ``PermissionError("sandbox: socket.socket is disabled")``;
* processes: a seccomp-BPF filter (x86_64 and aarch64 Linux) refuses ``fork``/``vfork``/``execve`` and any
  ``clone`` that is not a thread, signals aimed at another process, ``ptrace``, ``process_vm_*`` and
  ``pidfd_*`` -- kernel-enforced, so also against ``ctypes`` or ``posix``-level calls. ``os.fork``,
  ``subprocess.Popen``, ``multiprocessing`` and friends are also patched to raise with a clear message;
* files: destructive calls (``unlink``/``rmdir``/``rename``) are refused by seccomp and patched in ``os``
  and ``shutil``.

The verdict (:func:`run_check`, used by :func:`check_completion` and :func:`evaluate_samples`): the
candidate (prompt + completion) runs in one process and the problem's test in another, the *judge*, which
calls the candidate's function through a pipe; arguments and results cross as plain built-in data only, so
no object of the candidate's (an ``__eq__`` that always says yes, a patched builtin, a replaced helper) ever
reaches the check. The parent reads the verdict from the judge's exit status *and* a pipe that only the
judge holds; the judge is non-dumpable, so a process without capabilities cannot read or write its memory
or file descriptors. A candidate that exits (``sys.exit``, ``os._exit``), raises ``SystemExit`` or
``KeyboardInterrupt``, or dies inside a call fails the check whatever the test's own ``except`` clauses do.
:func:`run_program` runs a whole program (code and asserts together) and passes it when it reaches its
last statement; there the program is its own judge, so use it for trusted programs only.

Limits are set inside the child's first lines, not in ``preexec_fn``: ``preexec_fn`` is unsafe with
threads, and :func:`evaluate_samples` runs programs from a thread pool. The effect is the same (the limits
are in place before any candidate code runs).

This contains mistakes, loops, bombs, stray I/O and verdict forgery by generated code; it is not a
hardened boundary against an adversary who attacks the kernel or, when lmlab does not run as root, reads
the memory of lmlab's own process (use a container or VM for that).
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from lmlab.errors import LmlabError

STATUSES = ("passed", "failed", "timeout", "error")
_OK_MARK = "__lmlab_sandbox_ok__"  # the program role's last line (sandbox_child.program_main)


@dataclass(frozen=True)
class SandboxConfig:
    """Limits for one program run.

    ``cpu_s`` None -> ``ceil(timeout_s) + 1`` (the wall clock is the real limit; CPU time only stops
    busy loops early on a loaded machine). ``network_namespace``/``seccomp``: "auto" uses them when the
    kernel allows and falls back silently; True makes their absence an error; False skips them.
    """

    timeout_s: float = 5.0
    memory_mb: int = 512
    cpu_s: int | None = None
    max_output_bytes: int = 65_536
    network_namespace: bool | str = "auto"
    seccomp: bool | str = "auto"
    python: str = field(default_factory=lambda: sys.executable)

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise LmlabError(f"SandboxConfig.timeout_s must be > 0, got {self.timeout_s!r}")
        if not (isinstance(self.memory_mb, int) and self.memory_mb >= 32):
            raise LmlabError(f"SandboxConfig.memory_mb must be an integer >= 32, got {self.memory_mb!r}")
        if self.cpu_s is not None and not (isinstance(self.cpu_s, int) and self.cpu_s >= 1):
            raise LmlabError(f"SandboxConfig.cpu_s must be a positive integer or None, got {self.cpu_s!r}")
        if not (isinstance(self.max_output_bytes, int) and self.max_output_bytes >= 1024):
            raise LmlabError(f"SandboxConfig.max_output_bytes must be an integer >= 1024, got {self.max_output_bytes!r}")
        for name in ("network_namespace", "seccomp"):
            if getattr(self, name) not in (True, False, "auto"):
                raise LmlabError(f"SandboxConfig.{name} must be True, False or 'auto', got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SandboxResult:
    """``status`` in passed / failed (ran, raised) / timeout (wall or CPU limit) / error (killed by a
    signal, output limit, sandbox failure); ``reason`` is a one-line explanation."""

    status: str
    reason: str
    returncode: int | None
    duration_s: float
    stdout: str = ""
    stderr: str = ""
    guards: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return asdict(self)


def _child_source() -> str:
    """The text of :mod:`lmlab.eval.code.sandbox_child`, copied into each run's directory (the child runs
    under ``python -I`` without lmlab on its path)."""
    return (resources.files("lmlab.eval.code") / "sandbox_child.py").read_text(encoding="utf-8")


def _child_config(cfg: SandboxConfig, **extra) -> dict:
    return {
        "netns": _mode(cfg.network_namespace),
        "seccomp": _mode(cfg.seccomp),
        "seccomp_arch": platform.machine(),
        "memory_bytes": cfg.memory_mb * 1024 * 1024,
        "cpu_s": cfg.cpu_s or int(cfg.timeout_s) + 2,
        "max_output": cfg.max_output_bytes,
        **extra,
    }


def _start(cfg: SandboxConfig, role: str, work: Path, child_cfg: dict, stdin, pass_fds=()) -> subprocess.Popen:
    """One sandboxed interpreter in ``work`` (its own session, a minimal environment, stdout/stderr to files)."""
    (work / "sandbox_child.py").write_text(_child_source(), encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work)}
    with open(work / "stdout", "wb") as out, open(work / "stderr", "wb") as err:
        return subprocess.Popen([cfg.python, "-I", "-B", str(work / "sandbox_child.py"), role, json.dumps(child_cfg)],
                                cwd=work, env=env, stdin=stdin, stdout=out, stderr=err, start_new_session=True,
                                close_fds=True, pass_fds=pass_fds)


def run_program(source: str, config: SandboxConfig | None = None) -> SandboxResult:
    """Run ``source`` as a whole program under the limits of ``config`` (see module doc); it passes when it
    runs to its last statement. The program is its own judge here: to score untrusted code against a test,
    use :func:`run_check` / :func:`check_completion`, whose verdict the code cannot reach."""
    cfg = config or SandboxConfig()
    if not isinstance(source, str):
        raise LmlabError(f"run_program: source must be a string, got {type(source).__name__}")
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="lmlab-sandbox-") as tmp:
        work = Path(tmp)
        (work / "program.py").write_text(source, encoding="utf-8")
        start = time.monotonic()
        timed_out = False
        try:
            proc = _start(cfg, "program", work, _child_config(cfg), subprocess.PIPE)
        except OSError as exc:
            return SandboxResult("error", f"could not start the interpreter: {exc}", None, 0.0)
        try:
            proc.communicate(input=(token + "\n").encode(), timeout=cfg.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            proc.wait()
        finally:
            _kill_group(proc.pid)  # sweep anything the program left behind in its group
        duration = time.monotonic() - start
        stdout = _read_bounded(work / "stdout", cfg.max_output_bytes)
        stderr = _read_bounded(work / "stderr", cfg.max_output_bytes)
        out_size = _output_size(work)
        guards = _read_guards(work / "guards.json")
    return _classify(proc.returncode, timed_out, stdout, stderr, token, out_size, cfg, duration, guards)


def run_check(candidate_source: str, test_source: str, entry_point: str, context_source: str = "",
              config: SandboxConfig | None = None) -> SandboxResult:
    """Judge ``entry_point`` as defined by ``candidate_source`` with the ``check(candidate)`` of ``test_source``.

    Two sandboxed processes (module doc): the candidate's defines the function and answers calls; the
    judge's runs ``context_source`` (the problem's prompt + canonical solution, so tests can use the prompt's
    helpers), then ``test_source``, then ``check(proxy)``. Arguments and results cross as plain built-in
    data (a test that relies on mutating its argument in place cannot be judged this way). ``passed`` only if
    the judge exits 0 *and* its verdict pipe -- held by the judge alone -- says so. ``stdout``/``stderr`` are
    the candidate's, ``returncode`` is the judge's.
    """
    cfg = config or SandboxConfig()
    for name, value in (("candidate_source", candidate_source), ("test_source", test_source),
                        ("entry_point", entry_point), ("context_source", context_source)):
        if not isinstance(value, str):
            raise LmlabError(f"run_check: {name} must be a string, got {type(value).__name__}")
    if not entry_point.isidentifier():
        raise LmlabError(f"run_check: entry_point must be a Python identifier, got {entry_point!r}")
    with tempfile.TemporaryDirectory(prefix="lmlab-candidate-") as ctmp, \
            tempfile.TemporaryDirectory(prefix="lmlab-judge-") as jtmp:
        cwork, jwork = Path(ctmp), Path(jtmp)
        (cwork / "candidate.py").write_text(candidate_source, encoding="utf-8")
        (jwork / "context.py").write_text(context_source, encoding="utf-8")
        (jwork / "test.py").write_text(test_source, encoding="utf-8")
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        verdict_r, verdict_w = os.pipe()
        start = time.monotonic()
        procs: list[subprocess.Popen] = []
        try:
            procs.append(_start(cfg, "candidate", cwork, _child_config(
                cfg, entry_point=entry_point, request_fd=request_r, reply_fd=reply_w),
                subprocess.DEVNULL, (request_r, reply_w)))
            procs.append(_start(cfg, "judge", jwork, _child_config(
                cfg, entry_point=entry_point, request_fd=request_w, reply_fd=reply_r, verdict_fd=verdict_w),
                subprocess.DEVNULL, (request_w, reply_r, verdict_w)))
        except OSError as exc:
            for proc in procs:
                _kill_group(proc.pid)
                proc.wait()
            return SandboxResult("error", f"could not start the interpreter: {exc}", None, 0.0)
        finally:
            for fd in (request_r, request_w, reply_r, reply_w, verdict_w):
                os.close(fd)  # only the children hold these now: each sees the other's exit as end of stream
        candidate, judge = procs
        timed_out = False
        try:
            judge.wait(timeout=cfg.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        try:  # the candidate ends by itself once the judge closes its pipe
            candidate.wait(timeout=0 if timed_out else max(0.0, min(1.0, cfg.timeout_s - (time.monotonic() - start))))
        except subprocess.TimeoutExpired:
            pass
        for proc in procs:
            _kill_group(proc.pid)
            proc.wait()
        duration = time.monotonic() - start
        verdict = _read_verdict(verdict_r)
        stdout = _read_bounded(cwork / "stdout", cfg.max_output_bytes)
        stderr = _read_bounded(cwork / "stderr", cfg.max_output_bytes)
        judge_stderr = _read_bounded(jwork / "stderr", 4096)
        out_size = _output_size(cwork)
        guards = _read_guards(cwork / "guards.json") + ("separate-judge",) + tuple(
            f"judge-{g}" for g in _read_guards(jwork / "guards.json") if g == "undumpable")

    def result(status: str, reason: str) -> SandboxResult:
        return SandboxResult(status, reason, judge.returncode, round(duration, 4), stdout, stderr, guards)

    if timed_out:
        return result("timeout", f"wall-clock limit of {cfg.timeout_s:g} s exceeded (process groups killed)")
    if judge.returncode == 0 and verdict == {"status": "passed", "reason": "all tests passed"}:
        return result("passed", "all tests passed")
    for proc in (candidate, judge):
        if proc.returncode is not None and proc.returncode < 0:
            status, reason = _signal_outcome(-proc.returncode)
            return result(status, reason)
    if out_size >= cfg.max_output_bytes:
        return result("error", f"output limit of {cfg.max_output_bytes} bytes exceeded")
    if verdict and verdict.get("status") in ("failed", "error"):
        return result(verdict["status"], str(verdict.get("reason", ""))[:300])
    last = next((line for line in reversed(judge_stderr.strip().split("\n")) if line.strip()), "")
    return result("error", f"the judge gave no verdict (exit status {judge.returncode}){': ' + last if last else ''}")


def _read_verdict(fd: int) -> dict | None:
    """The judge's one verdict line, or None when the pipe holds anything else (nothing, several lines,
    garbage): only an exact single line counts."""
    try:
        os.set_blocking(fd, False)
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            data = b""
    finally:
        os.close(fd)
    if data.count(b"\n") != 1 or not data.endswith(b"\n"):
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _signal_outcome(sig: int) -> tuple[str, str]:
    if sig == signal.SIGXCPU:
        return "timeout", "CPU time limit exceeded (SIGXCPU)"
    if sig == signal.SIGKILL:
        return "error", "killed by SIGKILL (CPU hard limit or the kernel's OOM killer)"
    if sig == signal.SIGSYS:
        return "error", "killed by the seccomp filter (SIGSYS)"
    try:
        return "error", f"killed by signal {signal.Signals(sig).name}"
    except ValueError:
        return "error", f"killed by signal {sig}"


def _output_size(work: Path) -> int:
    return max((work / name).stat().st_size for name in ("stdout", "stderr"))


def _mode(value: bool | str) -> str | bool:
    return "required" if value is True else ("auto" if value == "auto" else False)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_bounded(path: Path, limit: int) -> str:
    with open(path, "rb") as fh:
        return fh.read(limit).decode("utf-8", errors="replace")


def _read_guards(path: Path) -> tuple[str, ...]:
    try:
        value = json.loads(path.read_text()[:1000])
    except (OSError, ValueError):
        return ()
    return tuple(str(g) for g in value) if isinstance(value, list) else ()


def _classify(returncode: int | None, timed_out: bool, stdout: str, stderr: str, token: str, out_size: int,
              cfg: SandboxConfig, duration: float, guards: tuple[str, ...]) -> SandboxResult:
    mark = f"{_OK_MARK} {token}"
    lines = stdout.rstrip("\n").split("\n")
    ok = returncode == 0 and lines[-1] == mark
    clean_stdout = "\n".join(lines[:-1]) if lines[-1] == mark else stdout

    def result(status: str, reason: str) -> SandboxResult:
        return SandboxResult(status, reason, returncode, round(duration, 4), clean_stdout, stderr, guards)

    if timed_out:
        return result("timeout", f"wall-clock limit of {cfg.timeout_s:g} s exceeded (process group killed)")
    if ok:
        return result("passed", "all tests passed")
    if returncode is not None and returncode < 0:
        return result(*_signal_outcome(-returncode))
    if out_size >= cfg.max_output_bytes:
        return result("error", f"output limit of {cfg.max_output_bytes} bytes exceeded")
    last = next((line for line in reversed(stderr.strip().split("\n")) if line.strip()), "")
    if returncode == 0:
        return result("failed", "exited before the tests ran to completion")
    return result("failed", last.strip()[:300] or f"exit status {returncode}")


# --------------------------------------------------------------------------------------------------
def check_completion(problem, completion: str, config: SandboxConfig | None = None) -> SandboxResult:
    """Judge one completion of a :class:`~lmlab.eval.code.problems.CodeProblem` with :func:`run_check`: the
    candidate process runs ``prompt + completion``, the judge runs ``prompt + canonical_solution`` (for the
    helpers a test may call) and ``test``, then ``check(entry_point)``."""
    return run_check(problem.prompt + completion + "\n", problem.test, problem.entry_point,
                     problem.prompt + problem.canonical_solution + "\n", config)


@dataclass(frozen=True)
class CodeEvalResult:
    """``pass_at_k``: {"pass@k": mean over problems}; ``results``: task_id -> one result per sample."""

    pass_at_k: dict[str, float]
    results: dict[str, list[SandboxResult]]

    def outcomes(self) -> dict[str, list[bool]]:
        return {tid: [r.passed for r in rs] for tid, rs in self.results.items()}

    def status_counts(self) -> dict[str, int]:
        counts = {s: 0 for s in STATUSES}
        for rs in self.results.values():
            for r in rs:
                counts[r.status] += 1
        return counts


def evaluate_samples(problems: Sequence, samples: Mapping[str, Sequence[str]], ks: Sequence[int] = (1, 10, 100),
                     config: SandboxConfig | None = None, workers: int = 2) -> CodeEvalResult:
    """Run every sample of every problem in the sandbox (``workers`` at a time) and compute pass@k.

    ``samples``: task_id -> completions (the text that follows the prompt). Every problem needs samples.
    """
    from lmlab.eval.code.passk import pass_at_ks

    by_id = {p.task_id: p for p in problems}
    missing = [tid for tid in by_id if not samples.get(tid)]
    if missing:
        raise LmlabError(f"evaluate_samples: no samples for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    unknown = [tid for tid in samples if tid not in by_id]
    if unknown:
        raise LmlabError(f"evaluate_samples: samples for unknown task_id(s) {', '.join(unknown[:5])}")
    jobs = [(tid, i, completion) for tid in by_id for i, completion in enumerate(samples[tid])]
    if not isinstance(workers, int) or workers < 1:
        raise LmlabError(f"evaluate_samples: workers must be a positive integer, got {workers!r}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(lambda job: check_completion(by_id[job[0]], job[2], config), jobs))
    results: dict[str, list[SandboxResult]] = {tid: [None] * len(samples[tid]) for tid in by_id}  # type: ignore[list-item]
    for (tid, i, _), res in zip(jobs, done):
        results[tid][i] = res
    outcomes = {tid: [r.passed for r in rs] for tid, rs in results.items()}
    return CodeEvalResult(pass_at_ks(outcomes, ks), results)
