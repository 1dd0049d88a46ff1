"""Compile a feature plan's generated hot path to machine code with Cython, off the hot path.

The generated ``run`` (:func:`fds.features.codegen.build_fused`) is plain Python; Cython turns
the same code, with C types declared for its locals (times, values and running sums as
doubles, positions and counts as C integers, the log's columns read from the arrays' memory:
``codegen._declarations``), into a C extension that runs it faster (1.27-1.29x the
interpreted plan over the benchmark's stream, 1.13-1.16x in its steady state, where the work
is mostly memory; the untyped kernel before it: 1.13-1.14x and 1.03-1.05x). Every
arithmetic step is the interpreter's in the same IEEE doubles, in the same order, no
multiply-add is fused (``-ffp-contract=off``) and no fast math comes from ``CFLAGS``
(``-fno-fast-math``) and on x86-64 doubles stay in SSE registers (``-mfpmath=sse``), so the
results are the same bit for bit for float timestamps (what the engine passes; not on a
32-bit x86 build, whose x87 registers round otherwise)
(tests/features/test_kernel.py runs the brute-force properties on it and holds it to the
interpreted plan). A build takes 10-20 s of one core (gcc), too long for a start or a hot
reload to wait on, so:

- a plan binds its interpreted ``run`` at once and asks its :class:`Compiler` for the
  source's kernel; built in this process or found in the cache directory, it is bound at
  once (a module import, milliseconds);
- otherwise a background thread builds it in a child process (``nice``-d: the hot path keeps
  its core) into the cache, and the plan switches to it at its next event, on its own thread.

A built module carries the SHA-256 of its bytes after them, checked before it is loaded (a
module cut short killed the process with SIGBUS when loaded); one build of a kernel runs at a
time (a lock per kernel in the cache). A build that fails (no C compiler, no Python headers) is
said once and the plan stays interpreted, which decides the same; a marker in the cache, left by
the build itself, holds plans made within the hour (a start, a rules reload) from trying it
again (a service restarted in a loop builds nothing); a plan left interpreted asks again every
10 minutes. Kernels are cached by the hash of their source, the module around it (the
functions it calls), the names it binds, Cython's version, the interpreter's ABI tag, ``CC``
and ``CFLAGS``, so a ruleset's features are built once per machine; the cache is safe to
delete. fds loads code from it: a
cache directory (or kernel) of another user, or one its group or every user can write, is
refused, the plans interpreted; a kernel is checked and loaded through one open file.

>>> Compiler.from_env({"FDS_FEATURE_KERNEL": "off"}) is None
True
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import platform
import pwd
import stat
import subprocess
import sys
import sysconfig
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from fds.errors import describe
from fds.features.codegen import LARGE
from fds.features.shards import SHARDS

__all__ = ["Compiler", "module_source"]

log = logging.getLogger("fds.features.kernel")

#: A build that takes longer than this is given up (a hung compiler must not hold a thread and
#: a child for good); the default feature set builds in 10-20 s on one busy core.
BUILD_TIMEOUT_S = 600.0
#: A failed build is not tried again by any process for this long (its marker's age).
RETRY_AFTER_S = 3600.0
#: A kernel no process loaded for this long is removed by the next build (each ruleset's
#: features add ~1 MB to the cache: it grew without end).
KEEP_S = 30 * 86400.0
#: A process that loaded a kernel marks it in use (its mtime) this often, so that a build of
#: another's does not remove it as unused while a service that loaded it a month ago runs on
#: (its next start built it again; see :func:`_mark_in_use`).
IN_USE_EVERY_S = 86400.0
#: Less room than this on the cache's disk explains a build that failed without a word (its
#: C file, object and module take a few MB).
BUILD_ROOM = 20 << 20
#: Values of ``FDS_FEATURE_KERNEL``.
MODES = ("compiled", "off")

# Bind and switch are serialised: a plan binding its run while a build of its source lands
# either sees the kernel or is told to switch, never neither.
_LOCK = threading.Lock()

Factory = Callable[[Mapping[str, Any]], Callable[..., Any]]


def _renamable(path: Path) -> str | None:
    """The first folder above ``path`` in which another user could rename it, said with why:
    owned by another user than this one or root, or writable by its group or every user
    without the sticky bit (a build reads and writes the cache by its path: a writer of a
    parent put a folder of theirs in its place for the seconds Cython read the source, and
    back, and fds loaded their code from its own cache, a security review; as ssh's
    StrictModes judges a home). ``None`` when no such folder is above it."""
    me = os.geteuid()
    for parent in Path(os.path.abspath(path)).parents:
        try:
            st = parent.stat()
        except OSError:
            continue  # (not there yet: made by this user, below one that is checked)
        if st.st_uid not in (me, 0):
            return f"{parent}, owned by user {st.st_uid}"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return f"{parent}, writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def module_source(source: str, names: list[str]) -> str:
    """The Cython module of a generated ``run``: ``make(ns)`` binds the names the source reads
    from its namespace (``names``) as closure variables and returns ``run``; the source may
    use what ``_PRELUDE`` declares (``array``, ``_double_at``). Compiled once per source;
    every plan of that source calls ``make`` with its own state and helpers."""
    body = "".join(f"    {k} = ns[{k!r}]\n" for k in names)
    inner = "".join(f"    {line}\n" if line else "\n" for line in source.splitlines())
    return (
        "# cython: language_level=3, binding=False\n"
        # No fused multiply-add (a*b+c rounded once, where the interpreter rounds twice: other
        # values on a machine whose compiler contracts them by default, like arm64), no fast
        # math from a CFLAGS of the environment (x == x, the test for a missing value, folded
        # to true) and, on x86-64, SSE doubles (-mfpmath=387 there kept sums in 80 bits: the
        # last bits of means and stds differed, a QA pass). After CFLAGS on gcc's command
        # line: these win.
        f"# distutils: extra_compile_args = -ffp-contract=off -fno-fast-math{_X86_64}\n"
        "# fds feature kernel (generated by fds.features.kernel; safe to delete)\n"
        f"{_PRELUDE}def make(ns):\n{body}{inner}    return run\n"
    )


_X86_64 = " -mfpmath=sse" if platform.machine().lower() in ("x86_64", "amd64") else ""

# What a typed source (fds.features.codegen._declarations) uses besides its namespace: the
# array type, an entity's shard (fds.features.shards.shard_of: a string's CRC-32, read from its
# characters in place when they are ASCII), a read of an array of doubles' memory after one
# bounds check, whether a list's slice or a last-seen table holds a value (codegen.seen_in,
# codegen.seen_since: in one scan, newest first, no copy), and codegen._fold's path for a
# table of lists (with ``fold``, that function, for the others).
_PRELUDE = """from cpython cimport array
from cpython.object cimport Py_EQ, Py_SIZE, PyObject_RichCompareBool
from zlib import crc32 as _crc32

cdef extern from "Python.h":
    int PyUnicode_READY(object) except -1
    bint PyUnicode_IS_ASCII(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)

cdef unsigned int _CRC[256]
cdef unsigned int _c
cdef int _i, _j
for _i in range(256):  # (zlib's CRC-32: reflected, polynomial 0xEDB88320)
    _c = _i
    for _j in range(8):
        _c = (_c >> 1) ^ 0xEDB88320u if _c & 1 else _c >> 1
    _CRC[_i] = _c

cdef inline Py_ssize_t _shard_of(object k) except -1:
    cdef const unsigned char* p
    cdef unsigned int c = 0xFFFFFFFFu
    cdef Py_ssize_t i, n
    cdef Py_hash_t h
    if isinstance(k, str):
        PyUnicode_READY(k)
        if PyUnicode_IS_ASCII(k):  # (its UTF-8: the string's own bytes, read in place)
            p = <const unsigned char*>PyUnicode_DATA(k)
            n = PyUnicode_GET_LENGTH(k)
            for i in range(n):
                c = _CRC[(c ^ p[i]) & 0xFF] ^ (c >> 8)
            return (c ^ 0xFFFFFFFFu) % SHARDS
        return _crc32(k.encode("utf-8", "surrogatepass")) % SHARDS
    h = hash(k) % SHARDS
    return h + SHARDS if h < 0 else h

cdef inline double _double_at(array.array a, Py_ssize_t i) except? -1.0:
    if <size_t>i >= <size_t>Py_SIZE(a):
        raise IndexError("array index out of range")
    return a.data.as_doubles[i]

cdef inline bint _seen_in(list a, object v, Py_ssize_t lo, Py_ssize_t hi) except -1:
    cdef Py_ssize_t i
    if hi > len(a):
        hi = len(a)
    i = hi - 1
    while i >= lo and i >= 0:  # (newest first)
        x = a[i]
        if x is v or PyObject_RichCompareBool(x, v, Py_EQ):
            return True
        i -= 1
    return False

cdef inline bint _seen_since(list vals, array.array times, object v, double cut) except -1:
    cdef Py_ssize_t i = len(vals) - 1
    if i >= Py_SIZE(times):
        raise IndexError("a last-seen table's times are fewer than its values")
    while i >= 0 and times.data.as_doubles[i] > cut:  # (newest first: in time order)
        x = vals[i]
        if x is v or PyObject_RichCompareBool(x, v, Py_EQ):
            return True
        i -= 1
    return False

cdef int _fold_at(array.array ts, list col, list st, Py_ssize_t i_off, double horizon,
                  Py_ssize_t i_last, object fold) except -1:
    cdef Py_ssize_t o = st[i_off]
    cdef Py_ssize_t k = o, n = Py_SIZE(ts), q, j
    cdef double t
    cdef list table
    cdef array.array times
    while k < n and ts.data.as_doubles[k] <= horizon:
        k += 1
    if k <= o:
        return 0
    if type(st[i_last]) is not list or len(st[i_last]) + (k - o) > LARGE:
        fold(ts, col, st, i_off, horizon, i_last)  # (a new table, a dict, or one to become one)
        return 0
    table = st[i_last]
    times = st[i_last + 1]
    for q in range(o, k):  # (oldest first: each value's entry keeps its newest time)
        v = col[q - o]
        if v is None:
            continue
        t = ts.data.as_doubles[q]
        j = len(table) - 1
        while j >= 0:
            x = table[j]
            if x is v or PyObject_RichCompareBool(x, v, Py_EQ):
                break
            j -= 1
        if j >= 0:
            if times.data.as_doubles[j] >= t:
                continue
            del table[j]
            del times[j]
        j = len(table)
        while j > 0 and times.data.as_doubles[j - 1] > t:  # (in time order)
            j -= 1
        table.insert(j, v)
        times.insert(j, t)
    del col[: k - o]
    st[i_off] = k
    return 0

""".replace("LARGE", str(LARGE)).replace("SHARDS", str(SHARDS))


def _tag() -> str | None:
    """What a kernel's key includes besides its source (``None``: Cython is not installed)."""
    try:
        import Cython
    except ImportError:
        log.warning("Cython is not installed: features stay interpreted (pip install cython)")
        return None
    # (the compiler and its flags too: a kernel built under other ones is another kernel)
    flags = f"{os.environ.get('CC', '')}|{os.environ.get('CFLAGS', '')}"
    return (
        f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}-cython{Cython.__version__}"
        f"-{flags}"
    )


class Compiler:
    """Builds and caches feature kernels in ``cache`` (a directory, made when first needed).

    One compiler is shared by the plans of a process (:meth:`shared`): a source is built once
    and every plan of it (a reload's, a restored state's, a takeover's) binds the same kernel.
    """

    _shared: ClassVar[dict[Path, Compiler]] = {}

    def __init__(self, cache: str | Path) -> None:
        # (absolute: the build runs in a directory of its own, where a relative cache named
        # nothing and every build failed, a review)
        self.cache = Path(cache).expanduser().absolute()
        self._built: dict[str, Factory | None] = {}  # key -> make (None: the build failed)
        self._waiting: dict[str, list[_Switch]] = {}  # key -> switch callbacks
        self.builds = 0  # builds run by this process (the cache hit otherwise)
        self._refused = False  # (the cache's refusal was said)
        self._held: set[str] = set()  # keys whose recent failure (a marker) was said
        self.tag = _tag()

    @classmethod
    def shared(cls, cache: str | Path) -> Compiler:
        path = Path(cache).expanduser().resolve()
        with _LOCK:
            if path not in cls._shared:
                cls._shared[path] = cls(path)
            return cls._shared[path]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Compiler | None:
        """The compiler the CLI uses: ``FDS_FEATURE_KERNEL`` (``compiled``, the default, or
        ``off``: interpreted features, no build) and ``FDS_KERNEL_CACHE`` (default
        ``$XDG_CACHE_HOME/fds/kernels``, else ``~/.cache/fds/kernels``)."""
        env = os.environ if environ is None else environ
        mode = env.get("FDS_FEATURE_KERNEL", "compiled").strip().lower() or "compiled"
        if mode not in MODES:
            from fds.errors import ConfigError

            raise ConfigError(
                f"FDS_FEATURE_KERNEL={mode!r} is not one of {', '.join(MODES)}: set it to "
                "'compiled' (features run as machine code once built) or 'off' (interpreted)"
            )
        if mode == "off":
            return None
        cache = env.get("FDS_KERNEL_CACHE")
        if not cache:
            base = env.get("XDG_CACHE_HOME", "")
            if not os.path.isabs(base):  # (the XDG spec ignores a relative one)
                home, said = env.get("HOME"), f"HOME={env.get('HOME')!r}"
                if home is None:  # (as ~ is expanded: the user's entry, a container's uid
                    with contextlib.suppress(KeyError):  # may have none)
                        home = pwd.getpwuid(os.getuid()).pw_dir
                        said = f"HOME unset, the user's home {home!r}"
                if not (home and os.path.isabs(home) and os.path.isdir(home)):
                    # (an empty HOME made the cache /.cache, one that does not exist had it
                    # created, both without a word: a QA pass)
                    log.warning(
                        "no home directory (%s): features stay interpreted (set "
                        "FDS_KERNEL_CACHE to a directory for the compiled kernels)",
                        said,
                    )
                    return None
                base = os.path.join(home, ".cache")
            cache = str(Path(base) / "fds" / "kernels")
        return cls.shared(cache)

    # ------------------------------------------------------------------ binding
    def attach(self, plan: Any, source: str, ns: Mapping[str, Any], run: Callable) -> bool:
        """Set ``plan._run`` to the kernel of ``source`` bound to ``ns`` if it is built (in this
        process, or found in the cache), else to ``run`` (interpreted; ``True`` when compiled).
        A kernel not built yet is built in the background; once it is, the plan's next event
        rebinds it (:class:`_Switch`). Under the lock, so that a kernel landing while a plan
        binds is never missed."""
        if self.tag is None:
            plan._run = run
            return False
        names = sorted(ns)  # (in the key: one source may read other names, a review's
        # KeyError '_PROV': a feature-less plan with and without provenance; and the module
        # around the source: a kernel of the same source built with another prelude, whose
        # functions it calls, is another kernel)
        text = module_source(source, names)
        key = hashlib.sha256(f"{self.tag}\n{text}".encode()).hexdigest()[:20]
        with _LOCK:
            unsafe = self._unsafe(self.cache)
            if unsafe:
                if not self._refused:  # (said once; not remembered: fixed, the next start uses it)
                    log.warning("features stay interpreted: %s", unsafe)
                    self._refused = True
                plan._run = run
                return False
            if key not in self._built and key not in self._waiting:
                make = self._load(key)
                if make is not None:
                    self._built[key] = make
                    log.info("features run compiled (kernel %s)", self._path(key))
            if key in self._built:
                make = self._built[key]
                plan._run = run if make is None else make(ns)
                return make is not None
            plan._run = run
            held = self._failed_lately(key)
            if held:  # (not remembered: a plan bound after the hour, or after the marker is
                if key not in self._held:  # deleted, builds it: a reload's, a restore's)
                    self._held.add(key)
                    _warn(held)
                return False
            running = key in self._waiting
            waiting = self._waiting.setdefault(key, [])
            if not any(s.plan() is plan for s in waiting):  # (a plan's retry while its build
                waiting.append(_Switch(plan))  # runs adds none: a review)
            if running:
                return False
            try:  # (started here, not by the thread: a process that exits at once still
                child = self._start(key, text)  # leaves it built)
            except _Refused as exc:
                self._failed(key, exc, mark=False)
                return False
            except Exception as exc:  # (a cache that cannot be written, ...: named, where
                why = f"the cache {self.cache} (FDS_KERNEL_CACHE) cannot be used: {describe(exc)}"
                self._failed(key, why)  # it said only the errno, a QA pass)
                return False
            threading.Thread(
                target=self._build, args=(key, child), name="fds-kernel-build", daemon=True
            ).start()
        return False

    def wait(self, timeout: float = BUILD_TIMEOUT_S) -> bool:
        """Wait until no build is running (tests, benchmarks); ``False`` on timeout."""
        end = time.monotonic() + timeout
        while True:
            with _LOCK:  # (a build ends under the lock: its key leaves _waiting before its
                if not self._waiting:  # warning is logged, which an unlocked read saw
                    return True  # first, a review)
            if time.monotonic() > end:
                return False
            time.sleep(0.05)

    # ------------------------------------------------------------------ building
    def _path(self, key: str) -> Path:
        return self.cache / f"fds_kernel_{key}{sysconfig.get_config_var('EXT_SUFFIX')}"

    def _log(self, key: str) -> Path:
        return self.cache / f"fds_kernel_{key}.log"  # (a failed build's output, read once)

    def _marker(self, key: str) -> Path:
        return self.cache / f"fds_kernel_{key}.failed"  # (why, when: see _failed_lately)

    @staticmethod
    def _unsafe(
        path: Path, what: str = "feature kernel cache", st: os.stat_result | None = None
    ) -> str | None:
        """Why fds must not load code from ``path`` (the cache or a kernel in it, ``st`` its
        stat when the caller holds it open): another user's, or writable by its group or every
        user (stricter than a checkpoint's :func:`~fds.models.registry.untrusted`: a group
        member could rewrite a module in place), or a cache on a file system mounted noexec
        (there or, not made yet, where it would be made: nothing is made there); ``None`` when
        it is not, or not there yet (the cache is made 0700, its modules 0755)."""
        from fds.models.registry import untrusted

        if what == "feature kernel cache" and _noexec(path):
            return (  # (a kernel built there failed to load, and was built again every hour)
                f"{what} {path} is on a file system mounted noexec: no kernel built there can "
                "be loaded; set FDS_KERNEL_CACHE to a directory on another"
            )
        if what == "feature kernel cache" and (open_to := _renamable(path)) is not None:
            return (
                f"{what} {path} is in {open_to}: whoever can write there can put a folder of "
                "theirs in the cache's place while a kernel builds, and have fds build and "
                "load their code; set FDS_KERNEL_CACHE to a directory under folders only you "
                "(or root) can write"
            )
        try:
            st = st or path.stat()
        except OSError:
            return None  # (missing: made when first needed; unreadable: the build says why)
        why = untrusted(st) or (
            f"writable by its group (mode {st.st_mode & 0o7777:04o})"
            if st.st_mode & 0o020
            else None
        )
        if why is None:
            return None
        if what != "feature kernel cache":  # (a kernel: removed, no advice to follow)
            return f"{what} {path} is {why}: fds loads no code from it"
        fix = (
            "set FDS_KERNEL_CACHE to a directory of your own" if st.st_uid != os.geteuid()
            else f"make it private (chmod go-w '{path}')"
        )  # fmt: skip
        return f"{what} {path} is {why}: fds loads no code from it; {fix}"

    def _failed_lately(self, key: str) -> str | None:
        """Why the build of ``key`` failed, if a process failed it within RETRY_AFTER_S."""
        marker = self._marker(key)
        try:  # (not blocking on a FIFO planted under its name, nor through a link)
            fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    return None
                age = time.time() - st.st_mtime
                why = f.read(1000).decode("utf-8", "replace").strip()
        except OSError:
            return None
        if not 0 <= age < RETRY_AFTER_S:  # (a future time: a clock stepped back, a copy)
            return None
        return (
            f"its build failed {age / 60:.0f} min ago ({why}{_output(self._log(key))}); it is "
            "built again "
            f"{RETRY_AFTER_S / 3600:.0f} h after that failure, or once {marker} is deleted "
            "(by a start, a rules reload, or a running plan within 10 min)"
        )

    def _load(self, key: str) -> Factory | None:
        path, name = self._path(key), f"fds_kernel_{key}"
        if name in sys.modules:  # (loaded once per process: Cython refuses a second time)
            loaded: Factory = sys.modules[name].make
            with contextlib.suppress(OSError):  # (in use: not swept as unused)
                os.utime(path)
            return loaded
        try:  # (the cache checked through an open descriptor, then the kernel opened in it
            # and checked and loaded through one open file: the code loaded is the code
            # checked, whoever can write the cache's parents or swap the file meanwhile; the
            # kernel alone was checked, and a writer of a parent who put a folder of their own
            # in the cache's place during a build had this process build and load their code:
            # a security review)
            dfd = os.open(self.cache, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None  # (gone: built again; unreadable: the build says why)
        try:
            unsafe = self._unsafe(self.cache, st=os.fstat(dfd))
            if unsafe:
                log.warning("%s", unsafe)
                return None
            flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
            fd = os.open(path.name, flags, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:  # (another user's, unreadable: said as such, a review)
            why = self._unsafe(path, "feature kernel")
            log.warning("%s", why or f"feature kernel {path} does not open ({describe(exc)})")
            return None
        finally:
            os.close(dfd)
        try:
            st = os.fstat(fd)
            unsafe = (
                self._unsafe(path, "feature kernel", st) if stat.S_ISREG(st.st_mode)
                else f"feature kernel {path} is no regular file: fds loads no code from it"
            )  # fmt: skip
            if unsafe:  # (a private cache holding another's file: planted before it was private)
                log.warning("%s: %s", unsafe, self._drop(key))
                return None
            module = _exec(name, path, fd)
            make: Factory = module.make
            sys.modules[name] = module
            if not _marker:  # (marked in use while this process runs: not swept as unused)
                _marker.append(threading.Thread(target=_mark_in_use, name="fds-kernel-in-use"))
                _marker[0].daemon = True
                _marker[0].start()
            with contextlib.suppress(OSError):  # (its last use: a kernel unused for KEEP_S
                os.utime(path)  # is swept)
        except Exception as exc:  # (a damaged cache entry is built again)
            hint = (
                " (a file system mounted noexec? set FDS_KERNEL_CACHE to a directory on another)"
                if "map segment" in str(exc) else ""
            )  # fmt: skip
            # (its removal failing, a read-only cache, stopped fds replay: a QA pass)
            log.warning(
                "feature kernel %s does not load (%s)%s: %s", path, exc, hint, self._drop(key)
            )
            return None
        finally:
            os.close(fd)
        return make

    def _drop(self, key: str) -> str:
        """Remove the kernel of ``key`` that is not to be loaded; what became of it, for the
        warning. One that stays (a read-only cache) is not built again in this process: the
        build could not replace it (it was, and said so in a second warning: a QA pass)."""
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            self._built[key] = None
            return f"not removed ({describe(exc)}): features stay interpreted"
        return "removed, built again"

    def _build(self, key: str, child: subprocess.Popen[bytes]) -> None:
        t0 = time.monotonic()
        try:
            self._finish(key, child)
            with _LOCK:
                make = self._load(key)
            if make is None:
                refused = self._unsafe(self._path(key), "feature kernel")
                if refused:
                    raise _Refused(refused)
                raise RuntimeError(f"{self._path(key)} was built but does not load")
        except Exception as exc:  # (any failure leaves the plans interpreted: said once)
            with _LOCK:
                self._failed(key, exc, mark=not isinstance(exc, _Refused))
            return
        log.info(
            "feature kernel built in %.1f s (%s); features run compiled from the next event",
            time.monotonic() - t0, self._path(key),
        )  # fmt: skip
        with _LOCK:
            self._built[key] = make
            for switch in self._waiting.pop(key, []):
                switch()

    def _failed(self, key: str, why: BaseException | str, mark: bool = True) -> None:
        """(Lock held.) The plans waiting for ``key`` stay interpreted; said once. ``mark``:
        leave a marker that holds other processes from trying it again for a while (not for
        a refusal of the cache: nothing is written into a cache not trusted)."""
        self._waiting.pop(key, None)
        marker = self._marker(key)
        if mark and _mark(marker, str(why)):  # (it holds this process's plans for the hour, as
            self._held.add(key)  # another's, said now: a reload after it builds)
            why = (
                f"{why}; not tried again for {RETRY_AFTER_S / 3600:.0f} h (by any process): "
                f"delete {marker} to try at once{_output(self._log(key))}"
            )  # (said by the next start only: a QA pass)
        elif not isinstance(why, _CacheGone):  # (a cache removed meanwhile: built again by
            self._built[key] = None  # a retry; else no marker: never again in this process)
        _warn(why)

    def _start(self, key: str, text: str) -> subprocess.Popen[bytes]:
        """Cython + the C compiler in a child process (:func:`build_in`) in a private
        directory of the cache; the child renames the module into place (another process
        building it too renames the same) and removes the directory. It outlives this process
        (its own session, its output in a file): a replay that ends before its kernel is built
        leaves it built for the next one."""
        import shutil
        import tempfile

        self.cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        unsafe = self._unsafe(self.cache)  # (made just now by another user, or with the mode
        if unsafe:  # it had: refused as at attach)
            raise _Refused(unsafe)
        now = time.time()
        for old in self.cache.glob("build-*"):  # (left by a build killed at its timeout, a
            with contextlib.suppress(OSError):  # crash or a reboot: no build lasts that long)
                if now - old.stat().st_mtime > 2 * BUILD_TIMEOUT_S:
                    shutil.rmtree(old, ignore_errors=True)
        for old in self.cache.glob("fds_kernel_*"):  # (kernels, markers, logs unused for a
            with contextlib.suppress(OSError):  # month: an old ruleset's; not a lock, which a
                if old.suffix != ".lock" and now - old.stat().st_mtime > KEEP_S:  # build may
                    old.unlink()  # hold)
        self.builds += 1
        tmp = Path(tempfile.mkdtemp(prefix=f"build-{key}-", dir=self.cache))
        final, failed = self._path(key), self._log(key)
        try:  # (a full disk left an empty build folder at every start: a QA pass)
            (tmp / f"fds_kernel_{key}.pyx").write_text(text)
            with contextlib.suppress(OSError):  # (an earlier failure's output: a build killed
                failed.unlink(missing_ok=True)  # at its timeout writes none, and had it named)
            with open(tmp / "build.log", "wb") as out:
                return subprocess.Popen(
                    [sys.executable, "-c", _CHILD, str(tmp), str(final), str(failed)],
                    cwd=tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
                    start_new_session=True,  # (no preexec_fn: unsafe with threads; it nices
                )  # fmt: skip  # itself)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _finish(self, key: str, child: subprocess.Popen[bytes]) -> None:
        """Wait for the build of ``key``; raise what went wrong."""
        final, failed = self._path(key), self._log(key)
        try:
            code = child.wait(timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, 9)
            child.wait()
            raise RuntimeError(f"the build took over {BUILD_TIMEOUT_S:.0f} s") from None
        if code == 0 and final.exists():
            return
        if not self.cache.is_dir():  # (said "no output": a QA pass)
            raise _CacheGone(f"the cache {self.cache} (FDS_KERNEL_CACHE) was removed during it")
        text = failed.read_text(errors="replace") if failed.exists() else ""
        free = _free_bytes(self.cache)
        if not text.strip() and free is not None and free < BUILD_ROOM:  # (its output could
            raise RuntimeError(  # not be written either: "no output", a QA pass)
                f"Cython's build exited with {code}: the disk of {self.cache} is full "
                f"({free // 1024:,} KB free; a build needs about {BUILD_ROOM >> 20} MB): free "
                "space there"
            )
        raise RuntimeError(f"Cython's build exited with {code}: {_reason(text)}")


class _Refused(RuntimeError):
    """The cache (or a kernel in it) is not trusted: nothing is loaded from it or written."""


class _CacheGone(RuntimeError):
    """The cache was removed while a kernel was built (a plan made later builds it again)."""


def _warn(why: BaseException | str) -> None:
    log.warning(
        "feature kernel not built, features stay interpreted (the same values, a little "
        "slower): %s; set FDS_FEATURE_KERNEL=off to skip the build",
        why,
    )


def _output(log_file: Path) -> str:
    """Where a failed build's whole output is, for its warning (it was named nowhere, and
    removed once read when the process that started the build waited for it: a QA pass)."""
    return f"; the compiler's whole output: {log_file}" if log_file.is_file() else ""


def _free_bytes(folder: Path) -> int | None:
    """Bytes this user may still write on ``folder``'s disk, or None when not known."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _reason(output: str) -> str:
    """A failed build's reason in its output: its last line naming an error, else its last."""
    lines = output.strip().splitlines()
    why = next((ln for ln in reversed(lines) if "error" in ln.lower()), None)
    return why or (lines[-1] if lines else "no output")


def _sealed(data: bytes) -> bool:
    """Are these a module's bytes as the build left them, its SHA-256 after them
    (:func:`~fds.models.registry.write_summed`: the dynamic loader ignores what follows an
    ELF file's last section)?"""
    from fds.models.registry import SUM_MARK, sum_matches

    return data.rfind(SUM_MARK, -len(SUM_MARK) - 64) >= 0 and sum_matches(data)


# The descriptors of the kernels loaded (see _exec).
_HELD: list[int] = []


def _exec(name: str, path: Path, fd: int) -> Any:
    """Import the module open as ``fd`` (``path`` is its name in the cache), once its bytes are
    whole: loaded through ``/proc/self/fd`` where there is one, so that what is loaded is the
    file checked, not whatever ``path`` names by then."""
    with os.fdopen(os.dup(fd), "rb") as f:
        data = f.read()
    if not _sealed(data):  # (a cut one was loaded, and killed the process at every start by
        raise ValueError(  # SIGBUS: a QA pass)
            "damaged: its bytes do not match the checksum written with them (a file cut "
            "short, a failing disk), or it has none (an earlier release's)"
        )
    where = str(path)
    if os.path.exists("/proc/self/fd"):  # (a descriptor of its own, held for the life of the
        _HELD.append(os.dup(fd))  # process as the module is: the dynamic loader knows a
        where = f"/proc/self/fd/{_HELD[-1]}"  # module by the name it was opened by, and a
        # number closed and used again would name the module loaded before: a test)
    loader = importlib.machinery.ExtensionFileLoader(name, where)
    spec = importlib.util.spec_from_file_location(name, where, loader=loader)
    assert spec is not None
    try:
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    except BaseException:  # (its descriptor closed unless the loader mapped it: one leaked
        if where != str(path) and not _mapped(_HELD[-1]):  # per failed load, a review)
            os.close(_HELD.pop())
        raise
    module.__file__ = str(path)
    return module


_MARK_NOW = threading.Event()  # (wakes the marker at once: tests)
_marker: list[threading.Thread] = []  # (the marker thread, once started)


def _mark_in_use() -> None:
    """(A daemon thread, started at the first kernel loaded.) Mark the kernels this process
    loaded as in use every IN_USE_EVERY_S, busy or idle (a mark at each plan's sweep came
    40 days apart for a plan of 90-day windows, whose sweeps wait for as many events as it
    holds states: a review)."""
    while True:
        _MARK_NOW.wait(IN_USE_EVERY_S)
        _MARK_NOW.clear()
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None) if name.startswith("fds_kernel_") else None
            if path:
                with contextlib.suppress(OSError):  # (removed meanwhile: built again if needed)
                    os.utime(path)


def _noexec(path: Path) -> bool:
    """Is ``path`` (or where it would be made: its nearest existing parent) on a file system
    mounted noexec, where no module can be mapped? (No such flag: False.)"""
    flag = getattr(os, "ST_NOEXEC", 0)  # (Linux's; macOS has none: a review)
    for where in (path, *path.parents) if flag else ():
        try:
            return bool(os.statvfs(where).f_flag & flag)
        except FileNotFoundError:
            continue
        except OSError:
            return False
    return False


def _mapped(fd: int) -> bool:
    """Is the file open as ``fd`` mapped into this process (opened by the dynamic loader,
    which then knows it by its name for good)? ``True`` when that cannot be told."""
    ino = str(os.fstat(fd).st_ino)
    try:
        with open("/proc/self/maps") as f:
            return any(len(cols := line.split()) > 5 and cols[4] == ino for line in f)
    except OSError:
        return True


def _mark(marker: Path, why: str) -> bool:
    """Write a failed build's marker (its reason's first line) atomically, a new file renamed
    over its name (not written through a link or into a FIFO planted there); ``False`` when
    the cache cannot be written."""
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{(why.splitlines() or ['?'])[0][:300]}\n")
        os.replace(tmp, marker)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True


# The build's child process (a fresh interpreter: its own GIL and its own session).
_CHILD = "import sys; from fds.features.kernel import build_in; build_in(*sys.argv[1:])"


def build_in(tmp: str, final: str, failed: str) -> None:
    """(The build's child process.) Cythonize and compile the one ``.pyx`` in ``tmp`` in place,
    rename the module to ``final``, and remove ``tmp`` whatever happens; on failure its output
    (``build.log``, where the parent sends it) is copied to ``failed``."""
    import shutil

    from Cython.Build.Cythonize import main as cythonize

    from fds.models.registry import write_summed

    os.nice(10)  # (the build shares the machine with the hot path it speeds up)
    work, log_file, started = Path(tmp), Path(failed), time.time()
    marker, held = log_file.with_suffix(".failed"), False
    try:
        # One build of a kernel at a time: another process's first, then this one finds it
        # built (short replays on an empty cache each ran gcc for the same kernel, a QA pass).
        lock = os.open(log_file.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)  # (released when this process ends)
        if Path(final).is_file() and _sealed(Path(final).read_bytes()):
            return
        with contextlib.suppress(OSError):  # (the other build failed meanwhile: not again)
            held = marker.stat().st_mtime >= started
        if held:
            print(f"error: another build of it failed just now: {marker.read_text()}")
            raise SystemExit(1)
        (pyx,) = work.glob("*.pyx")
        try:
            cythonize(["-3", "-i", "-q", str(pyx)])
        except SystemExit as exc:
            if exc.code:
                print(exc.code, flush=True)  # (setuptools' reason: printed by exit, too late)
                raise
        built = work / Path(final).name
        write_summed(built, built.read_bytes())  # (its checksum after it, fsynced: _sealed)
        os.chmod(built, 0o755)  # (the linker's mode followed the umask: 0777 was not loaded)
        os.replace(built, final)
        for done in (marker, log_file):  # (an earlier failure's)
            with contextlib.suppress(OSError):
                done.unlink(missing_ok=True)
    except BaseException:
        sys.stdout.flush()
        if not held:  # (else the other build's output and marker are the ones to keep)
            shutil.copyfile(work / "build.log", failed)
            os.chmod(failed, 0o600)  # (as the cache's other files; the marker here too: a
            _mark(marker, _reason(log_file.read_text("utf-8", "replace")))  # service that
            # dies sooner than its build leaves one)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _Switch:
    """A callback that makes ``plan`` rebind at its next event, on its own thread: its ``_run``
    becomes a one-shot function that rebinds (taking the built kernel) and runs the event."""

    __slots__ = ("plan",)

    def __init__(self, plan: Any) -> None:
        self.plan = weakref.ref(plan)

    def __call__(self) -> None:
        p, me = self.plan(), self.plan
        if p is None:
            return

        def rebind(tx: Any, t: float, wm: float) -> Any:
            q = me()
            assert q is not None  # (called by its own compute)
            q._bind()
            return q._run(tx, t, wm)

        p._run = rebind
