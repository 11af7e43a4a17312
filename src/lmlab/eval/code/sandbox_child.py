"""The code the sandboxed interpreters run: ``python -I -B sandbox_child.py ROLE CONFIG_JSON``.

Standard library only (the child does not import lmlab). :mod:`lmlab.eval.code.sandbox` copies this file
into each run's private directory and starts it; the limits below are in place before any untrusted code
runs. Three roles:

* ``program``: run ``program.py`` (a whole program; the program is its own judge, see ``run_program``);
* ``candidate``: run ``candidate.py`` (prompt + completion), then serve calls of the entry point over two
  pipes, arguments and results as plain data (:func:`encode`/:func:`decode`);
* ``judge``: run the problem's context (prompt + canonical solution, for the helpers tests use) and its test
  in a separate process, with the entry point replaced by a proxy that calls the candidate's process; the
  verdict is this process's exit status plus one line on a pipe only the judge holds.

Why two processes: a candidate that shares an interpreter with its check can rewrite anything the check
relies on (builtins, helpers, ``__eq__`` of a returned object, the runner's frames and its pass token). A
candidate in its own process can return only plain data, and cannot reach the judge: the judge is
non-dumpable (no ``/proc/PID/mem``, ``/proc/PID/fd`` or ``ptrace`` for a process without capabilities), the
candidate holds no capabilities and, where the kernel has Landlock, sits in a Landlock domain that cannot
reach any process outside it (the judge, lmlab's own process), and seccomp refuses ``ptrace``,
``process_vm_*``, ``pidfd_*`` and signals to other processes.
"""

import json
import os
import sys

MAX_MESSAGE = 16 * 1024 * 1024  # bytes of one request or reply line
# exceptions a reply may re-raise in the judge under their own type (plain Exception subclasses only:
# SystemExit, KeyboardInterrupt, GeneratorExit end the check as failed; StopIteration could end a test's loop)
_NOT_REPLAYED = frozenset({"StopIteration", "StopAsyncIteration"})


# ---------------------------------------------------------------------------------------------- limits
def setup(cfg, role):
    """Network namespace, rlimits, no capabilities + Landlock (candidate/program), non-dumpable (judge), seccomp,
    Python-level guards; returns the guards in place, also written to ``guards.json``."""
    guards = []
    if cfg["netns"]:
        ok = False
        try:
            import ctypes
            ok = ctypes.CDLL(None, use_errno=True).unshare(0x40000000) == 0  # CLONE_NEWNET
        except Exception:
            pass
        if ok:
            guards.append("netns")
        elif cfg["netns"] == "required":
            raise SystemExit("sandbox: cannot create a network namespace")
    import resource
    mem = cfg["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["max_output"], cfg["max_output"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    guards.append("rlimits")
    if role == "judge":
        if _set_undumpable():
            guards.append("undumpable")
    else:
        guards += _drop_privileges()
        if cfg.get("landlock", True) and _landlock():
            guards.append("landlock")
    if cfg["seccomp"]:
        if _seccomp(cfg["seccomp_arch"]):
            guards.append("seccomp")
        elif cfg["seccomp"] == "required":
            raise SystemExit("sandbox: cannot install the seccomp filter")
    _patch_python()
    guards.append("python-guards")
    with open("guards.json", "w") as fh:
        fh.write(json.dumps(guards))
    return guards


def _set_undumpable():
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)            # PR_SET_DUMPABLE 0
        return libc.prctl(3, 0, 0, 0, 0) == 0  # PR_GET_DUMPABLE
    except Exception:
        return False


def _drop_privileges():
    """Clear the capability sets (a root process keeps its uid, so the interpreter can still import the
    standard library wherever it lives, but loses CAP_SYS_PTRACE, CAP_KILL, CAP_DAC_OVERRIDE, ...)."""
    try:
        import ctypes
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()                 # effective, permitted, inheritable x 2 words: all 0
        ctypes.CDLL(None, use_errno=True).capset(header, data)
        with open("/proc/self/status") as fh:
            eff = next(line.split()[1] for line in fh if line.startswith("CapEff:"))
        return ["no-capabilities"] if int(eff, 16) == 0 else []
    except Exception:
        return []


def _landlock():
    """A Landlock domain (Linux >= 5.13): the process can no longer reach processes outside it (no
    ``/proc/PID/mem``, ``/proc/PID/fd``, ptrace; from ABI 6 no signals), may create, write, rename or
    delete files only beneath its work directory (and write ``/dev/null``), and (ABI >= 4) may not connect
    or bind TCP."""
    try:
        import ctypes
        import struct
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        abi = libc.syscall(444, None, 0, 1)             # landlock_create_ruleset(NULL, 0, VERSION)
        if abi < 1:
            return False
        # WRITE_FILE, REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR, MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM
        write_rights = sum(1 << bit for bit in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))
        if abi >= 2:
            write_rights |= 1 << 13                      # REFER
        if abi >= 3:
            write_rights |= 1 << 14                      # TRUNCATE
        net = 0b11 if abi >= 4 else 0                    # BIND_TCP, CONNECT_TCP: handled, never allowed
        scoped = 0b11 if abi >= 6 else 0                 # abstract unix sockets, signals
        attr = struct.pack("QQQ", write_rights, net, scoped)
        size = 24 if abi >= 6 else (16 if abi >= 4 else 8)
        buf = ctypes.create_string_buffer(attr[:size], size)
        ruleset = libc.syscall(444, buf, size, 0)
        if ruleset < 0:
            return False
        try:
            ok = True
            null_rights = (1 << 1) | ((1 << 14) if abi >= 3 else 0)   # /dev/null: WRITE_FILE (+ TRUNCATE)
            for path, rights, flags in ((".", write_rights, os.O_DIRECTORY), ("/dev/null", null_rights, 0)):
                target = os.open(path, os.O_PATH | flags)
                beneath = ctypes.create_string_buffer(struct.pack("=Qi", rights, target), 12)
                ok = ok and libc.syscall(445, ruleset, 1, beneath, 0) == 0   # LANDLOCK_RULE_PATH_BENEATH
                os.close(target)
            libc.prctl(38, 1, 0, 0, 0)                                 # PR_SET_NO_NEW_PRIVS
            return ok and libc.syscall(446, ruleset, 0) == 0           # landlock_restrict_self
        finally:
            os.close(ruleset)
    except Exception:
        return False


def _seccomp(arch):
    """Kernel-level refusal of process creation, exec, non-unix sockets, reaching other processes (signals,
    ptrace, process_vm_*, pidfd_*), deleting or renaming files."""
    try:
        import ctypes
        import struct
        tables = {
            "x86_64": (0xC000003E, dict(clone=56, clone3=435, fork=57, vfork=58, execve=59, execveat=322,
                        socket=41, kill=62, tgkill=234, tkill=200, ptrace=101, process_vm_readv=310,
                        process_vm_writev=311, pidfd_open=434, pidfd_send_signal=424, pidfd_getfd=438,
                        unlink=87, unlinkat=263, rmdir=84, rename=82, renameat=264, renameat2=316)),
            "aarch64": (0xC00000B7, dict(clone=220, clone3=435, execve=221, execveat=281, socket=198, kill=129,
                        tgkill=131, tkill=130, ptrace=117, process_vm_readv=270, process_vm_writev=271,
                        pidfd_open=434, pidfd_send_signal=424, pidfd_getfd=438, unlinkat=35, renameat=38,
                        renameat2=276)),
        }
        if arch not in tables:
            return False
        audit_arch, nr = tables[arch]
        ALLOW, EPERM, ENOSYS, EACCES = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38, 0x00050000 | 13
        pid = os.getpid()
        prog, fix = [], []          # (code, jt, jf, k); jumps to labels resolved below
        def ld(off): prog.append([0x20, 0, 0, off])
        def ret(v): prog.append([0x06, 0, 0, v])
        def jeq(k, label_true, label_false=None):
            fix.append((len(prog), label_true, label_false))
            prog.append([0x15, 0, 0, k])
        labels = {}
        ld(4)
        jeq(audit_arch, None, "deny")
        ld(0)
        if arch == "x86_64":  # x32 ABI numbers have bit 30 set: refuse them all
            prog.append([0x35, 0, 0, 0x40000000])
            fix.append((len(prog) - 1, "deny", None))
        jeq(nr["clone"], "clone")
        jeq(nr["clone3"], "nosys")
        jeq(nr["socket"], "socket")
        jeq(nr["kill"], "kill")
        jeq(nr["tgkill"], "kill")   # tgkill(tgid, tid, sig): the same first-argument rule as kill
        for name in ("fork", "vfork", "execve", "execveat", "tkill", "ptrace", "process_vm_readv",
                     "process_vm_writev", "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "unlink", "unlinkat",
                     "rmdir", "rename", "renameat", "renameat2"):
            if name in nr:
                jeq(nr[name], "deny")
        ret(ALLOW)
        labels["clone"] = len(prog)
        ld(16)                                        # args[0] low word: clone flags
        prog.append([0x45, 0, 0, 0x00010000])         # jset CLONE_THREAD
        fix.append((len(prog) - 1, "allow", "deny"))
        labels["socket"] = len(prog)
        ld(16)
        jeq(1, "allow", "noaccess")                   # AF_UNIX only
        labels["kill"] = len(prog)
        ld(16)
        jeq(pid, "allow")
        jeq(0, "allow")
        jeq((-pid) & 0xFFFFFFFF, "allow", "deny")
        labels["allow"] = len(prog)
        ret(ALLOW)
        labels["deny"] = len(prog)
        ret(EPERM)
        labels["nosys"] = len(prog)
        ret(ENOSYS)                                   # clone3 -> ENOSYS so glibc falls back to clone
        labels["noaccess"] = len(prog)
        ret(EACCES)
        for at, lt, lf in fix:
            for slot, label in ((1, lt), (2, lf)):
                if label is not None:
                    prog[at][slot] = labels[label] - at - 1
        raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
        buf = ctypes.create_string_buffer(raw, len(raw))

        class Prog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
        fprog = Prog(len(prog), ctypes.addressof(buf))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
        if libc.prctl(38, 1, None, 0, 0) != 0:        # PR_SET_NO_NEW_PRIVS
            return False
        return libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) == 0   # PR_SET_SECCOMP, FILTER
    except Exception:
        return False


def _patch_python():
    def blocked(what):
        def refuse(*args, **kwargs):
            raise PermissionError(f"sandbox: {what} is disabled")
        return refuse
    for name in ("fork", "forkpty", "system", "popen", "kill", "killpg", "setsid", "execv", "execve", "execvp",
                 "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
                 "spawnl", "spawnle", "spawnlp", "spawnlpe", "posix_spawn", "posix_spawnp", "remove", "unlink",
                 "rmdir", "removedirs", "rename", "renames", "replace"):
        if hasattr(os, name):
            setattr(os, name, blocked(f"os.{name}"))
    import posix
    for name in ("fork", "forkpty", "system", "kill", "killpg", "execv", "execve", "posix_spawn", "posix_spawnp"):
        if hasattr(posix, name):
            setattr(posix, name, blocked(f"posix.{name}"))
    import shutil
    shutil.rmtree = blocked("shutil.rmtree")
    shutil.move = blocked("shutil.move")
    import _socket
    import socket
    for mod in (socket, _socket):
        for name in ("socket", "socketpair", "create_connection", "create_server", "fromfd"):
            if hasattr(mod, name):
                setattr(mod, name, blocked(f"{mod.__name__}.{name}"))
    import subprocess
    subprocess.Popen = blocked("subprocess.Popen")
    for name in ("run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
        setattr(subprocess, name, blocked(f"subprocess.{name}"))
    import multiprocessing
    import multiprocessing.process
    multiprocessing.process.BaseProcess.start = blocked("multiprocessing")


# ----------------------------------------------------------------------------------------- the wire
def encode(value):
    """Plain data -> JSON-able tagged tree. Only exact built-in types cross (a subclass could carry an
    ``__eq__`` that says yes to everything); anything else is a TypeError."""
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value if -(1 << 62) < value < (1 << 62) else {"int": format(value, "x")}
    if t is float:
        return {"float": value.hex()}
    if t is complex:
        return {"complex": [value.real.hex(), value.imag.hex()]}
    if t is bytes:
        return {"bytes": value.hex()}
    if t is list or t is tuple or t is set or t is frozenset:
        return {t.__name__: [encode(v) for v in value]}
    if t is dict:
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    raise TypeError(f"a {t.__name__} cannot cross the sandbox boundary (plain built-in data only)")


_DECODERS = {
    "int": lambda x: int(x, 16), "float": float.fromhex, "bytes": bytes.fromhex,
    "complex": lambda x: complex(float.fromhex(x[0]), float.fromhex(x[1])),
    "list": lambda x: [decode(v) for v in x], "tuple": lambda x: tuple(decode(v) for v in x),
    "set": lambda x: {decode(v) for v in x}, "frozenset": lambda x: frozenset(decode(v) for v in x),
    "dict": lambda x: {decode(k): decode(v) for k, v in x},
}


def decode(tree):
    """Inverse of :func:`encode`; anything not produced by it is a ValueError."""
    if tree is None or type(tree) in (bool, int, str):
        return tree
    if type(tree) is dict and len(tree) == 1:
        (tag, payload), = tree.items()
        if tag in _DECODERS:
            if tag in ("list", "tuple", "set", "frozenset", "dict", "complex") and type(payload) is not list:
                raise ValueError(f"malformed {tag}")
            if tag in ("int", "float", "bytes") and type(payload) is not str:
                raise ValueError(f"malformed {tag}")
            return _DECODERS[tag](payload)
    raise ValueError("malformed value on the sandbox wire")


def send(fd, message):
    data = (json.dumps(message) + "\n").encode()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def receive(reader):
    """One message, or None at end of stream; ValueError for an over-long or malformed line."""
    line = reader.readline(MAX_MESSAGE + 1)
    if not line:
        return None
    if len(line) > MAX_MESSAGE or not line.endswith(b"\n"):
        raise ValueError("reply too long or cut short")
    message = json.loads(line)
    if type(message) is not dict:
        raise ValueError("malformed message")
    return message


def describe(exc):
    try:
        text = str(exc)
    except BaseException:
        text = ""
    name = type(exc).__name__
    return f"{name}: {text}"[:1000] if text else name


# ----------------------------------------------------------------------------------------- the roles
def _flushed_exit(code):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def program_main(cfg):
    """A whole program: passes if it runs to its end (exit 0 and the runner's token on the last line)."""
    token = sys.stdin.readline().strip()
    sys.stdin.close()
    setup(cfg, "program")
    import builtins
    import traceback
    with open("program.py", encoding="utf-8") as fh:
        source = fh.read()
    try:
        exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": builtins})
    except SystemExit as exc:
        sys.stderr.write(f"SandboxExit: program called exit({exc.code!r}) before its tests finished\n")
        sys.stderr.flush()
        os._exit(3)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    try:
        sys.stdout.flush()
    except Exception:
        pass
    os.write(1, ("\n" + "__lmlab_sandbox_ok__ " + token + "\n").encode())
    os._exit(0)


def candidate_main(cfg):
    """Define the candidate, then answer ``{"args", "kwargs"}`` requests with ``{"returned"}`` or
    ``{"raised": [type name, message]}`` until the judge closes the request pipe."""
    with open("candidate.py", encoding="utf-8") as fh:
        source = fh.read()
    requests, replies = os.fdopen(cfg["request_fd"], "rb"), cfg["reply_fd"]
    setup(cfg, "candidate")
    import builtins
    namespace = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        exec(compile(source, "candidate.py", "exec"), namespace)
        function = namespace[cfg["entry_point"]]
    except BaseException as exc:
        send(replies, {"load_error": describe(exc)})
        _flushed_exit(1)
    send(replies, {"ready": True})
    while True:
        try:
            request = receive(requests)
        except ValueError:
            _flushed_exit(2)
        if request is None:
            _flushed_exit(0)
        args, kwargs = decode(request["args"]), decode(request["kwargs"])
        try:
            reply = {"returned": encode(function(*args, **kwargs))}
        except BaseException as exc:  # noqa: BLE001 -- reported to the judge, which decides
            reply = {"raised": [type(exc).__name__, describe(exc)]}
        try:
            send(replies, reply)
        except (OSError, TypeError, ValueError):
            _flushed_exit(2)


class CandidateError(Exception):
    """An exception the candidate raised whose type the judge does not re-create."""


class CandidateAborted(BaseException):
    """The candidate's process left a call without an answer (exit, crash, kill, a malformed reply, or a
    SystemExit/KeyboardInterrupt): the check fails whatever the test's own ``except`` clauses do."""


class _Proxy:
    def __init__(self, request_fd, reply_fd):
        self.request_fd, self.replies = request_fd, os.fdopen(reply_fd, "rb")
        self.aborted = None  # the reason, once the candidate has aborted

    def abort(self, reason):
        self.aborted = self.aborted or reason
        raise CandidateAborted(self.aborted)

    def wait_ready(self):
        try:
            message = receive(self.replies)
        except ValueError as exc:
            self.abort(f"candidate: {exc}")
        if message is None:
            self.abort("the candidate's process ended before defining the function")
        if "load_error" in message:
            self.abort(f"candidate: {str(message['load_error'])[:1000]}")
        if message != {"ready": True}:
            self.abort("candidate: malformed ready message")

    def call(self, *args, **kwargs):
        if self.aborted:
            raise CandidateAborted(self.aborted)
        try:
            request = {"args": encode(args), "kwargs": encode(kwargs)}
        except (TypeError, ValueError, RecursionError) as exc:
            raise TypeError(f"sandbox: the test passed an argument that cannot cross to the candidate ({exc})")
        try:
            send(self.request_fd, request)
            reply = receive(self.replies)
        except (OSError, ValueError) as exc:
            self.abort(f"the candidate's process stopped answering ({describe(exc)})")
        if reply is None:
            self.abort("the candidate's process ended during a call (exit, os._exit or a crash)")
        if "returned" in reply and len(reply) == 1:
            try:
                return decode(reply["returned"])
            except (ValueError, TypeError, RecursionError, OverflowError):
                self.abort("candidate: malformed return value")
        raised = reply.get("raised")
        if not (isinstance(raised, list) and len(raised) == 2 and all(type(x) is str for x in raised)):
            self.abort("candidate: malformed reply")
        name, text = raised
        import builtins
        kind = getattr(builtins, name, None)
        if isinstance(kind, type) and issubclass(kind, BaseException) and not issubclass(kind, Exception):
            self.abort(f"the candidate raised {text[:300]} during a call")
        error = CandidateError(text[:1000])
        if isinstance(kind, type) and issubclass(kind, Exception) and name not in _NOT_REPLAYED:
            try:
                error = kind(f"{text[:1000]} (raised by the candidate)")
            except Exception:  # e.g. UnicodeDecodeError needs five arguments
                pass
        raise error


def judge_main(cfg):
    """Verdict = exit status 0 and one ``{"status": "passed"}`` line on the verdict pipe; anything else fails."""
    verdict_fd = cfg["verdict_fd"]
    with open("context.py", encoding="utf-8") as fh:
        context = fh.read()
    with open("test.py", encoding="utf-8") as fh:
        test = fh.read()
    setup(cfg, "judge")
    proxy = _Proxy(cfg["request_fd"], cfg["reply_fd"])

    def finish(status, reason):
        try:
            send(verdict_fd, {"status": status, "reason": reason[:1000]})
        finally:
            os._exit(0 if status == "passed" else 1)

    try:
        proxy.wait_ready()
    except CandidateAborted as exc:
        finish("failed", str(exc))
    entry = cfg["entry_point"]
    namespace = {"__name__": "__judge__"}
    try:
        exec(compile(context, "problem.py", "exec"), namespace)
        exec(compile(test, "test.py", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001
        finish("error", f"the problem's prompt, solution or test does not run: {describe(exc)}")
    check = namespace.get("check")
    if not callable(check):
        finish("error", "the problem's test defines no check(candidate) function")
    candidate = proxy.call
    namespace[entry] = candidate
    try:
        check(candidate)
    except BaseException as exc:  # noqa: BLE001 -- any way out of the check but its end is a failure
        finish("failed", proxy.aborted or describe(exc))
    if proxy.aborted:
        finish("failed", proxy.aborted)
    finish("passed", "all tests passed")


if __name__ == "__main__":
    ROLES = {"program": program_main, "candidate": candidate_main, "judge": judge_main}
    ROLES[sys.argv[1]](json.loads(sys.argv[2]))
