"""Build one of lmlab's C++ kernels on first use, once per machine, and fall back cleanly where it cannot.

Used by ``lmlab.core.native`` (fp32 decode kernels) and ``lmlab.efficient.gemv_kernel`` (int8/int4 GEMV).
Build: ``torch.utils.cpp_extension.load_inline`` with ``-O3 -mavx2 -mfma -fopenmp``; the build is cached, in
``$LMLAB_KERNEL_DIR`` when set, else torch's default (``$TORCH_EXTENSIONS_DIR`` or ~/.cache/torch_extensions).
``make install`` builds both, so a first decode does not wait for a compiler. Each kernel has its own switch
(an environment variable set to ``0``); without AVX2/FMA or a C++ compiler, or when the build fails, one
warning line is printed and PyTorch's own ops are used.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

ENV_BUILD_DIR = "LMLAB_KERNEL_DIR"
# torch's build lock is a bare file: a build killed half-way (Ctrl-C during the first compile) leaves it behind,
# and every later process would wait for it forever. A build takes 1-2 minutes; a lock this old is stale.
STALE_LOCK_SECONDS = 600
PRELUDE = Path(__file__).with_name("simd_prelude.h")  # helpers every kernel source shares, prepended to each
_UNBUILT = object()


def cpu_has_avx2_fma() -> bool:
    """AVX2 and FMA on an x86-64 CPU (from /proc/cpuinfo on Linux, torch's dispatch level elsewhere)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        return {"avx2", "fma"} <= set(flags.split())
    except (OSError, StopIteration):
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


class JitExtension:
    """C++ sources compiled into one Python module on the first ``module()`` call (None where it cannot run).

    ``source``: one file, or several compiled as one translation unit in order (so later ones can call earlier
    ones' functions); ``what`` names the kernel in messages ("lmlab's fp32 decode kernels"), ``fallback`` what runs instead,
    ``env_disable`` the variable that switches it off when set to ``0``.
    """

    def __init__(self, name: str, source: Path | tuple[Path, ...], functions: list[str], *, what: str, fallback: str,
                 env_disable: str) -> None:
        self.name, self.functions = name, functions
        self.sources = (source,) if isinstance(source, Path) else tuple(source)
        self.what, self.fallback, self.env_disable = what, fallback, env_disable
        self._lock = threading.Lock()
        self._module: object = _UNBUILT

    def unavailable_reason(self) -> str | None:
        """Why the kernel cannot be built here, or None if it can be tried."""
        if os.environ.get(self.env_disable, "1") == "0":
            return f"{self.env_disable}=0"
        if not cpu_has_avx2_fma():
            return "the CPU lacks AVX2/FMA"
        if not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")):
            return "no C++ compiler on PATH"
        return None

    def module(self) -> ModuleType | None:
        """The compiled module (built on the first call, then kept), or None where it cannot run."""
        if self._module is _UNBUILT:
            with self._lock:
                if self._module is _UNBUILT:
                    self._module = self._build()
        return self._module  # type: ignore[return-value]

    def _warn(self, why: str) -> None:
        print(f"warning: {self.what} {why}; using {self.fallback}", file=sys.stderr, flush=True)

    def _built_before(self, where: Path | None) -> bool:
        """Whether a compiled copy is likely cached (torch rebuilds anyway when the source changed)."""
        return where is not None and any(where.glob(f"{self.name}*.so"))

    def build_directory(self) -> Path | None:
        """Where torch builds and caches this extension (None if torch's private helper is unavailable)."""
        build_dir = os.environ.get(ENV_BUILD_DIR)
        if build_dir:
            return Path(build_dir) / self.name
        from torch.utils.cpp_extension import _get_build_directory

        try:
            return Path(_get_build_directory(self.name, verbose=False))
        except Exception:  # noqa: BLE001 -- a private helper; without it torch picks the place itself
            return None

    def clear_stale_lock(self, where: Path | None, poll_seconds: float = 1.0) -> bool:
        """Wait while another build holds the lock; remove it once older than ``STALE_LOCK_SECONDS`` (a killed
        build's). True if a stale lock was removed.

        Why wait here: torch's own wait never gives up, so a lock left by a build killed a minute ago (fresh at
        our start) would block this process for ever. A live build ends within the limit and removes its lock.
        """
        lock = None if where is None else where / "lock"
        said = False
        while lock is not None and lock.exists():
            try:
                age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:  # the other build finished between the two calls
                return False
            if age >= STALE_LOCK_SECONDS:
                lock.unlink(missing_ok=True)
                print(f"note: removed a stale build lock of {self.what} ({lock}), left by an interrupted build",
                      file=sys.stderr, flush=True)
                return True
            if not said:
                print(f"note: waiting for another build of {self.what} ({lock}); a lock older than "
                      f"{STALE_LOCK_SECONDS} s is taken as left by an interrupted build", file=sys.stderr, flush=True)
                said = True
            time.sleep(min(poll_seconds, STALE_LOCK_SECONDS - age + 0.01))
        return False

    def _build(self) -> ModuleType | None:
        reason = self.unavailable_reason()
        if reason is not None:
            if os.environ.get(self.env_disable, "1") != "0":
                self._warn(f"not used ({reason})")
            return None
        from torch.utils.cpp_extension import load_inline

        where = self.build_directory()
        custom = bool(os.environ.get(ENV_BUILD_DIR))  # else torch's default place (it creates it)
        if custom:
            where.mkdir(parents=True, exist_ok=True)
        self.clear_stale_lock(where)
        if not self._built_before(where):
            print(f"note: compiling {self.what} (once per machine, ~1 min)", file=sys.stderr, flush=True)
        try:
            # the shared helpers, then the kernels
            source = "\n".join([PRELUDE.read_text()] + [path.read_text() for path in self.sources])
            return load_inline(name=self.name, cpp_sources=[source], functions=self.functions,
                               extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"], extra_ldflags=["-fopenmp"],
                               build_directory=str(where) if custom else None, verbose=False)
        except Exception as err:  # noqa: BLE001 -- any build failure: fall back, say why on one line
            first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
            self._warn(f"failed to build ({first[:160]})")
            return None
