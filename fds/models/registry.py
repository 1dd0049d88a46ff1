"""The model registry: versioned, verified artifacts in a directory.

Layout (``models/registry/`` by default, git-ignored)::

    manifest.json        every version's entry + the champion pointer (rewritten atomically)
    v000001.pkl          the pickled River pipeline of version v000001
    .lock                serialises writers (trainer process, scorer, CLI) with flock

A manifest entry holds ``version, spec, parent, created_at, event_time, labels_learned,
evaluation, sha256, hmac, size, status``. Artifacts and the manifest are written atomically
(temp file + fsync + rename + fsync of the directory). Loading verifies the sha256 and, when a
key is configured (``FDS_MODEL_KEY``), the HMAC-SHA256 signature *before* anything is
unpickled; a mismatch raises :class:`fds.errors.ArtifactError` and nothing is loaded.
:meth:`Registry.import_version` adds a version published by another registry (the models-topic
feed of a scorer on another machine) under its own id, verified the same way, never unpickled.

>>> import tempfile
>>> reg = Registry(tempfile.mkdtemp(), key=b"secret")
>>> e = reg.publish({"w": 1.0}, spec={"name": "demo"}, labels_learned=10)
>>> e["version"], reg.load(e["version"]), reg.champion()
('v000001', {'w': 1.0}, None)
>>> reg.promote("v000001")["status"], reg.champion()
('champion', 'v000001')
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import pickle
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from fds.errors import ArtifactError, ConfigError, describe
from fds.timeutil import format_ts

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_REGISTRY",
    "ENTRY_FIELDS",
    "SUM_MARK",
    "Registry",
    "load_verified",
    "sign",
    "sum_matches",
    "verify",
    "write_atomic",
    "write_summed",
]

#: Default registry folder (git-ignored, next to the shipped specs).
DEFAULT_REGISTRY = Path("models/registry")
#: Versions kept on disk: enough to roll back several steps, small enough to stay tidy.
DEFAULT_RETAIN = 10
KEY_ENV = "FDS_MODEL_KEY"
#: Manifest fields a version carries to another registry (the models-topic announcement).
ENTRY_FIELDS = (
    "version", "seq", "spec", "parent", "created_at", "event_time", "labels_learned",
    "evaluation", "sha256", "hmac", "size", "fields_hmac",
)  # fmt: skip
#: The fields ``fields_hmac`` signs (with ``FDS_MODEL_KEY``): the artifact's HMAC alone let a
#: writer of the models topic re-announce an old signed artifact under a new id with invented
#: counts (which open the scorers' maturity gate and skip its warm-up).
SIGNED_FIELDS = (
    "version", "seq", "spec", "parent", "created_at", "event_time", "labels_learned",
    "evaluation", "sha256", "size",
)  # fmt: skip
#: The statuses fds gives a version (the manifest check refuses others: a hand-edited "weird"
#: was listed and promoted, a QA pass).
STATUSES = ("published", "shadow", "champion", "retired", "rejected")
#: What every manifest entry holds, and of which type (``fds models`` formats them).
_ENTRY_TYPES: dict[str, Any] = {
    "version": str, "seq": int, "status": str, "spec": dict, "created_at": str,
    "labels_learned": int, "sha256": str,
    # (null or absent in an earlier release's entries; edited into another type by hand, each
    # was a traceback in `fds models` or stopped `fds run`: a QA pass)
    "parent": (str, None), "evaluation": (dict, None), "hmac": (str, None),
    "event_time": (str, None), "size": (int, None),
}  # fmt: skip


def _is(value: Any, kind: Any) -> bool:
    """``isinstance`` where ``None`` stands for null and a bool is no int."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value is None:
        return None in kinds
    return isinstance(value, tuple(k for k in kinds if k is not None)) and not (
        isinstance(value, bool) and bool not in kinds
    )


def learned(entry: Mapping[str, Any]) -> tuple[int, int]:
    """``(labels_learned, frauds_learned)`` of a manifest entry, 0 for what is absent or no
    count (a null one passed the manifest's check, then stopped fds run: a review).

    >>> learned({"labels_learned": 9, "evaluation": {"frauds_learned": None}})
    (9, 0)
    """
    evaluation = entry.get("evaluation")
    frauds = evaluation.get("frauds_learned") if isinstance(evaluation, dict) else None
    return tuple(  # type: ignore[return-value]
        v if type(v) is int and v >= 0 else 0 for v in (entry.get("labels_learned"), frauds)
    )


# A version id is also a file name: only ids the registry itself makes are accepted from outside.
_VERSION_ID = re.compile(r"v[0-9]{6,}")
#: A wait for the registry's lock this long is said (a large artifact's write takes seconds).
LOCK_QUIET_S = 5.0
#: The temporary file of an artifact's or the manifest's write (tempfile.mkstemp's suffix).
_TEMP = re.compile(r"\.(?:manifest\.json|v[0-9]{6,}\.pkl)\.[A-Za-z0-9_]{8}")
#: A temporary file older than this is a killed write's (:meth:`Registry._sweep_temp`): every
#: write ends in seconds, the largest artifact's too.
TEMP_AGE_S = 600.0
_ARTIFACT = re.compile(_VERSION_ID.pattern + r"\.pkl")


#: The largest manifest read (a few KB per version kept) and artifact read when its entry
#: gives no size (the models topic carries up to 8 MB inline; a forest may be larger).
MAX_MANIFEST_BYTES = 64 << 20
MAX_ARTIFACT_BYTES = 2 << 30
#: An artifact is read up to its entry's size or this, whichever is more: a file of another
#: size then fails its check, which says why (a key, a forgery).
ARTIFACT_READ_BYTES = 64 << 20


#: What :func:`read_regular` says of a path that is no file to read (a FIFO, a device, a folder,
#: a link loop), as against a passing fault.
_NOT_A_FILE = frozenset({errno.EINVAL, errno.EISDIR, errno.ELOOP})


def read_regular(path: Path, limit: int, *, own: bool = False) -> bytes:
    """At most ``limit`` + 1 bytes of the regular file ``path``; anything else (a FIFO, a
    device, a folder) is an :class:`OSError` without waiting for it (opened non-blocking).
    ``own``: a file someone else may have written (:func:`untrusted`) is a
    :class:`ConfigError` (:func:`refused_as_untrusted`), checked on the file opened, and a
    link is not followed (a link to another registry's artifact was served: a review)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (os.O_NOFOLLOW if own else 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if own and (why := untrusted(st)) is not None:
            raise refused_as_untrusted(path, why)
        return f.read(limit + 1)


def untrusted(st: os.stat_result) -> str | None:
    """Why a file with this stat may hold what someone else wrote (owned by another user, or
    writable by every user), or ``None``. Group write is allowed: Kubernetes gives a volume's
    files to the pod's ``fsGroup`` (0660) at each mount, and a checkpoint refused so was
    thrown away at every restart (a review)."""
    if st.st_uid != os.geteuid():
        return f"owned by user {st.st_uid}, not by this process's ({os.geteuid()})"
    if st.st_mode & 0o002:
        return f"writable by every user (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def refused_as_untrusted(path: Path | str, why: str) -> ConfigError:
    """The error for a file :func:`untrusted` says why not to load."""
    return ConfigError(
        f"not loaded: the file is {why}, so it may not be what fds wrote (loading it would run "
        "whatever code it holds): make it this user's and not writable by every user, or "
        "remove it",
        where=str(path),
    )


def read_own(path: Path) -> bytes:
    """The bytes of ``path``, a regular file that no one but this process's user (and its
    group) may have written (:func:`untrusted`), opened without following a link: one that
    anyone else could have written, unpickled, would run their code here (a security review
    planted a checkpoint in a shared state dir). Raises :class:`ConfigError` naming the file
    otherwise, ``OSError`` when it cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        why = untrusted(st)
        if why is None:
            return f.read()
    raise refused_as_untrusted(path, why)


def seq_of(version: str | None) -> int:
    """The sequence number in a version id (``-1`` for none, or no id the registry makes): a
    version gone from the manifest (the registry deleted) still has its place in the order.

    >>> seq_of("v000011"), seq_of(None), seq_of("inline")
    (11, -1, -1)
    """
    return int(version[1:]) if version and _VERSION_ID.fullmatch(version) else -1


def _lock_within(lock: Any, wait_s: float) -> bool:
    """Take the exclusive lock of ``lock`` within ``wait_s`` (tried every 0.05 s): False when
    another holds it that long."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def owner_only(path: Path) -> int:
    """A descriptor of ``path`` (read-write, created if missing) readable by its owner only,
    an earlier release's 0644 file included."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)  # (a planted link
    # would have its target's mode changed: a review)
    with contextlib.suppress(OSError):  # (another user's file: as it is)
        os.fchmod(fd, 0o600)
    return fd


def _owned_as(fd: int, path: Path) -> None:
    """Run as root, give the file of ``fd`` the owner of ``path``'s folder: root's `fds models
    promote` (sudo, with the key) made the manifest root's, 0600, and the service user could
    no longer read its registry nor publish into it (a review). Only for a registry with a key
    (:attr:`Registry.shared`): without one, a file of another user is refused, root's own
    files in a folder it does not own included (a container's root on a mounted volume)."""
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            st = os.stat(path.parent)
            os.fchown(fd, st.st_uid, st.st_gid)


@contextlib.contextmanager
def atomic_file(path: Path, *, keep_owner: bool = False) -> Iterator[BinaryIO]:
    """A file to write ``path`` through, atomically: a temporary file in its directory (0600),
    fsynced and renamed over ``path`` when the block ends without an error (removed if it
    raises), then the directory fsynced. ``keep_owner``: :func:`_owned_as`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    if keep_owner:
        _owned_as(fd, path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # (named: a full disk's error named
            raise OSError(e.errno, e.strerror, str(path)) from e  # no file, a QA pass)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_atomic(path: Path, data: bytes, *more: bytes, keep_owner: bool = False) -> None:
    """Write ``data`` (then ``more``: no copy of a large ``data`` joined with them) to
    ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path, keep_owner=keep_owner) as f:
        f.write(data)
        for part in more:
            f.write(part)


#: What separates a file's pickle from its SHA-256 (hex) in :func:`write_summed`: no pickle
#: ends with it (one ends with its STOP opcode, ``.``), and ``pickle.loads`` ignores it.
SUM_MARK = b"\n#fds-sha256:"
_SUM_LEN = len(SUM_MARK) + 64


def write_summed(path: Path, data: bytes) -> None:
    """:func:`write_atomic` of ``data`` followed by :data:`SUM_MARK` and its SHA-256, which
    :func:`sum_matches` checks when it is read (a failing disk's flipped bytes made a state
    that loaded without a word: a QA pass)."""
    write_atomic(path, data, SUM_MARK, hashlib.sha256(data).hexdigest().encode())


def dump_summed(path: Path, obj: Any) -> None:
    """:func:`write_summed` of ``obj``'s pickle (protocol 5), streamed to the file as it is
    made: a large state is not held twice in memory."""

    class Summing:  # (what pickle writes, hashed on its way to the file)
        def __init__(self, f: BinaryIO) -> None:
            self.f, self.sha = f, hashlib.sha256()

        def write(self, b: Any) -> int:
            self.sha.update(b)
            return self.f.write(b)

    with atomic_file(path) as f:
        out = Summing(f)
        pickle.dump(obj, out, protocol=5)
        f.write(SUM_MARK + out.sha.hexdigest().encode())


def sum_matches(data: bytes) -> bool:
    """``False`` when ``data`` ends with a :data:`SUM_MARK` sum that does not match the bytes
    before it (or is cut inside it); ``True`` when it matches or there is none and the bytes
    end as a pickle does, with its STOP opcode ``.`` (a file of a release before the sum; a
    byte changed in the mark itself read as one, a QA pass). Without a copy: the bytes may be
    a million cards' state.

    >>> sum_matches(b"x." + SUM_MARK + hashlib.sha256(b"x.").hexdigest().encode())
    True
    >>> sum_matches(b"y." + SUM_MARK + hashlib.sha256(b"x.").hexdigest().encode())
    False
    >>> sum_matches(b"x."), sum_matches(b"x." + SUM_MARK.replace(b"h", b"i") + b"0" * 64)
    (True, False)
    """
    at = data.rfind(SUM_MARK, -_SUM_LEN)
    if at < 0:
        return data.endswith(b".")
    return hashlib.sha256(memoryview(data)[:at]).hexdigest().encode() == data[at + len(SUM_MARK) :]


def sign(data: bytes, key: bytes) -> str:
    """HMAC-SHA256 of ``data`` (hex)."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def sign_fields(entry: Mapping[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of an entry's :data:`SIGNED_FIELDS`, as canonical JSON.

    >>> e = {"version": "v000001", "seq": 1, "labels_learned": 5, "evaluation": {"auc": 0.9}}
    >>> sign_fields(e, b"k") == sign_fields({**e, "hmac": "x"}, b"k")  # other keys: not signed
    True
    >>> sign_fields(e, b"k") == sign_fields({**e, "labels_learned": 6}, b"k")
    False
    """
    return sign_record({k: entry.get(k) for k in SIGNED_FIELDS}, key)


#: What ``deployment_hmac`` signs in a models-topic announcement: the version, its artifact, and
#: whose it is (the model's name and the decisions topic it learned from), which the entry's
#: own signature does not (the trainer knows its deployment only when it announces): a writer
#: of a topic two deployments share relabelled one's signed version as the other's, served
#: there under a shared key (a security review).
DEPLOYMENT_FIELDS = ("name", "decisions_topic", "version", "sha256")


def sign_deployment(ann: Mapping[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of an announcement's :data:`DEPLOYMENT_FIELDS`.

    >>> a = {"name": "m", "decisions_topic": "decisions", "version": "v000001", "sha256": "ab"}
    >>> sign_deployment(a, b"k") == sign_deployment({**a, "decisions_topic": "staging"}, b"k")
    False
    """
    return sign_record({k: ann.get(k) for k in DEPLOYMENT_FIELDS}, key)


def sign_record(body: Mapping[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of ``body`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return sign(text.encode(), key)


def verify(
    data: bytes, *, sha256: str, signature: str | None = None, key: bytes | None = None
) -> None:
    """Raise :class:`ArtifactError` unless ``data`` has this sha256 (and, when ``key``, this
    HMAC signature). Nothing is unpickled.

    >>> verify(b"xy", sha256=hashlib.sha256(b"xy").hexdigest(), signature="00", key=b"k")
    Traceback (most recent call last):
    ...
    fds.errors.ArtifactError: artifact HMAC signature mismatch: wrong key or tampered artifact
    """
    if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), str(sha256)):
        raise ArtifactError("artifact sha256 mismatch: the file is corrupt or was altered")
    if key is None and signature:  # (it was loaded unchecked: a tampered artifact ran, a review)
        raise ArtifactError(
            f"artifact is signed but {KEY_ENV} is not set here: set it to check the signature",
            local=True,
        )
    if key is not None:
        if not signature:
            raise ArtifactError(
                f"artifact is not signed but {KEY_ENV} is set: republish it with the key",
                local=True,
            )
        if not hmac.compare_digest(sign(data, key), str(signature)):
            raise ArtifactError(
                "artifact HMAC signature mismatch: wrong key or tampered artifact", local=True
            )


#: Inputs a version must score cleanly before it may serve (and before fds train publishes it).
CANARY_SIZE = 64


def fraud_probability(model: Any, x: dict[str, float]) -> float:
    """``model``'s probability of fraud for input ``x``."""
    return float(model.predict_proba_one(x).get(True, 0.0))


def canary(
    model: Any, inputs: list[dict[str, float]], pause: Callable[[], None] | None = None
) -> None:
    """Raise :class:`ArtifactError` unless ``model`` scores every input finitely in [0, 1].

    ``pause`` runs between inputs: the scorer's watcher thread passes a pacer to hand the GIL
    back to the decision loop instead of holding it for the whole canary.
    """
    for x in inputs:
        if pause is not None:
            pause()
        try:
            p = fraud_probability(model, x)
        except Exception as e:  # maybe this machine's libraries (a River version): retried
            raise ArtifactError(f"canary: scoring raised {describe(e)}", local=True) from e
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ArtifactError(
                f"canary: score {p!r} is not a probability in [0, 1]", bad_model=True
            )


def load_verified(
    data: bytes, *, sha256: str, signature: str | None = None, key: bytes | None = None,
    then: Callable[[], None] | None = None,
) -> Any:  # fmt: skip
    """Unpickle ``data`` only after :func:`verify` passes (and ``then``, a further check).

    >>> blob = pickle.dumps([1, 2])
    >>> load_verified(blob, sha256=hashlib.sha256(blob).hexdigest())
    [1, 2]
    >>> load_verified(blob + b"x", sha256=hashlib.sha256(blob).hexdigest())
    Traceback (most recent call last):
    ...
    fds.errors.ArtifactError: artifact sha256 mismatch: the file is corrupt or was altered
    """
    verify(data, sha256=sha256, signature=signature, key=key)
    if then is not None:
        then()
    try:
        return pickle.loads(data)
    except Exception as e:
        raise ArtifactError(  # e.g. another library version on this machine
            f"artifact does not unpickle: {describe(e)}", local=True
        ) from e


def env_key() -> bytes | None:
    v = os.environ.get(KEY_ENV)
    if v is not None and not v:  # (it meant "no check" without a word: a review)
        raise ConfigError(f"{KEY_ENV} is set but empty: give the key, or unset it")
    return v.encode() if v else None


#: Digests of judged verdicts a trainer's registry keeps (``verdicts``): a verdict is made once
#: per contest, so these cover months of a fleet's contests (64 bytes each in the manifest).
MAX_VERDICTS_KEPT = 1000
#: Challengers in a shadow contest that retention keeps (the newest ones marked).
MAX_SHADOWS = 3


def _entries(folder: Path) -> list[Path]:
    """What ``folder`` holds; one that cannot be listed is a :class:`ConfigError`."""
    try:
        return list(folder.iterdir())
    except OSError as e:
        raise ConfigError(f"cannot read the model registry {folder}: {e.strerror or e}") from None


class Registry:
    """A directory of versioned model artifacts with one manifest.

    Parameters
    ----------
    path
        The registry folder (created if missing).
    key
        HMAC key; ``None`` reads ``FDS_MODEL_KEY`` from the environment (unset: sha256 only).
    retain
        How many versions to keep on disk (the champion and its parent are always kept).
    create
        Create the folder when missing (a publisher); ``False`` (the ``fds models``
        commands): a missing folder is a :class:`ConfigError`, a typo creates nothing.
    """

    def __init__(
        self,
        path: str | Path = DEFAULT_REGISTRY,
        *,
        key: bytes | None = None,
        retain: int = 0,
        create: bool = True,
    ) -> None:
        self.path = Path(path)
        self._dropped: list[Path] = []  # artifacts to delete once the manifest is written
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"model registry {self.path} is a file, not a folder")
        given = (
            "check the registry given (--registry, FDS_REGISTRY or a settings file's `registry`)"
        )
        if not self.path.is_dir() and not create:
            raise ConfigError(f"no model registry at {self.path}: {given}; `fds train` creates it")
        if (
            self.path.is_dir()
            and not (self.path / "manifest.json").exists()
            and any(
                not (f.name.startswith(".") or _ARTIFACT.fullmatch(f.name) or f.is_dir())
                for f in _entries(self.path)  # (a volume's lost+found: a new registry, a review)
            )
        ):  # (`--registry /tmp` listed "no versions", and a rollback left its lock there; a
            # first publish writes its artifact before the manifest, its temp files hidden;
            # `fds train --registry /tmp` would have published into it: a QA pass)
            raise ConfigError(
                f"{self.path} is no model registry (it holds other files and no manifest.json): "
                f"{given}; an empty folder is an empty registry"
            )
        self.made = create and not self.path.exists()  # (:meth:`unmake`)
        if create:
            try:
                self.path.mkdir(mode=0o700, parents=True, exist_ok=True)  # (owner-only)
            except OSError as e:  # (under a file, in /proc: a traceback, a QA pass)
                raise ConfigError(
                    f"cannot create the model registry {self.path}: {e.strerror or e}"
                ) from None
        self.key = key if key is not None else env_key()
        # (with a key, files of other users are taken: root's writes keep the folder's owner)
        self.shared = self.key is not None
        self.retain = retain or DEFAULT_RETAIN
        self._manifest_path = self.path / "manifest.json"
        if self.key is None:  # (said as fds run says it of a shared state dir)
            with contextlib.suppress(OSError):
                if (why := untrusted(self.path.stat())) is not None:
                    log.warning(
                        'model registry="%s" is %s: others can replace its versions and its '
                        "champion, and their artifacts are refused; give it a folder of its "
                        "own (chmod 700), or set %s on the trainer and every scorer",
                        self.path, why, KEY_ENV,
                    )  # fmt: skip
        else:  # (signed artifacts, and a manifest any user could point back at an older one or
            with contextlib.suppress(OSError):  # reject the good ones: said nowhere, a review)
                mode = self.path.stat().st_mode
                if mode & 0o002:
                    log.warning(
                        'model registry="%s" is writable by every user (mode %s): %s checks '
                        "its artifacts, not its manifest: anyone may make an older version "
                        "the champion or reject the good ones; chmod o-w it",
                        self.path, f"{stat.S_IMODE(mode):04o}", KEY_ENV,
                    )  # fmt: skip

    # -- reading ---------------------------------------------------------------------------

    def unmake(self, *also: str) -> None:
        """Remove the folder if this made it and it holds nothing but ``also`` (files of this
        process): a service that stopped at its start (a missing topic, a broker not there)
        left an empty registry behind."""
        if self.made and not (self.path / "manifest.json").exists():
            for name in also:
                with contextlib.suppress(OSError):
                    (self.path / name).unlink()
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def stamp(self) -> tuple[int, int]:
        """A cheap change marker of the manifest (``mtime_ns``, inode) for polling."""
        try:
            st = self._manifest_path.stat()
        except FileNotFoundError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_ino)

    def manifest(self) -> dict[str, Any]:
        try:  # (without a key, this user's only, as its artifacts: its sha256s decide them)
            raw = read_regular(self._manifest_path, MAX_MANIFEST_BYTES, own=self.key is None)
        except FileNotFoundError:
            return {"versions": {}, "champion": None, "next": 1, "history": []}
        except OSError as e:  # (a FIFO hung every command, /dev/zero ate the memory: a QA pass)
            if e.errno not in _NOT_A_FILE:  # (a passing fault, too many open files: retried
                raise  # by a scorer's verdict writer, not taken for a refusal, a review)
            raise ConfigError(
                f"registry manifest cannot be read: {e.strerror or e}",
                where=str(self._manifest_path),
            ) from None
        try:
            m = json.loads(raw)
        except (ValueError, RecursionError) as e:  # (`[` x 100,000: a traceback, a QA pass)
            why = "nested too deeply" if isinstance(e, RecursionError) else e
            raise ConfigError(  # (no word of what to do: a review)
                f"registry manifest is not valid JSON: {why}; restore manifest.json from a "
                "backup (the versions' v*.pkl files are not changed by this), or move the "
                "registry aside to begin a new one",
                where=str(self._manifest_path),
            ) from None
        if not isinstance(m, dict) or not isinstance(m.get("versions"), dict):
            raise ConfigError(
                "registry manifest has no 'versions' mapping: it was not written by fds",
                where=str(self._manifest_path),
            )
        for version, entry in m["versions"].items():  # (a traceback in `fds models`: a review)
            bad = [
                k for k, kind in _ENTRY_TYPES.items()
                if not isinstance(entry, dict) or not _is(entry.get(k), kind)
            ]  # fmt: skip
            if not bad and not _is(entry["spec"].get("name"), (str, None)):
                bad = ["spec.name"]
            if not bad and not _is((entry["evaluation"] or {}).get("frauds_learned"), (int, None)):
                bad = ["evaluation.frauds_learned"]  # (the scorers compare it to a count)
            if not bad and not _VERSION_ID.fullmatch(version):  # (a file name: `../x`, a QA
                bad = ["version id"]  # pass)
            if bad or entry["version"] != version:
                raise ConfigError(
                    f"registry manifest entry {version!r} lacks a valid "
                    f"{', '.join(bad) or 'version'}: it was not written by fds (or edited)",
                    where=str(self._manifest_path),
                )
            if entry["status"] not in STATUSES:
                raise ConfigError(
                    f"registry manifest entry {version!r} has status {entry['status']!r}, not "
                    f"one of {', '.join(STATUSES)}: it was not written by fds (or edited)",
                    where=str(self._manifest_path),
                )
        nxt = m.get("next")
        if nxt is not None and (
            type(nxt) is not int or any(e["seq"] >= nxt for e in m["versions"].values())
        ):
            # (`next: 2` edited in: the next publish overwrote v000002, the champion's file)
            raise ConfigError(
                f"registry manifest 'next' is {nxt!r}, not a whole number past every version's "
                "seq: it was not written by fds (or edited)",
                where=str(self._manifest_path),
            )
        history = m.get("history", [])
        if not isinstance(history, list) or not all(
            isinstance(h, dict) and _is(h.get("to"), str) and _is(h.get("from", 0), (str, None))
            for h in history
        ):  # (a hand-edited one: KeyError tracebacks in list and rollback, a QA pass)
            raise ConfigError(
                "registry manifest history items need 'from' and 'to': it was not written by "
                "fds (or edited)",
                where=str(self._manifest_path),
            )
        champion = m.get("champion")
        if not _is(champion, (str, None)) or (
            champion is not None and champion not in m["versions"]
        ):
            # (one naming no version was told as if typed by the user, "unknown model version",
            # listed as no champion, and promote went on: a QA pass; fds never prunes it)
            raise ConfigError(
                f"registry manifest champion {champion!r} is not one of its versions: it was "
                "not written by fds (or edited)",
                where=str(self._manifest_path),
            )
        return m

    def versions(self) -> list[dict[str, Any]]:
        """All entries, oldest first."""
        return sorted(self.manifest()["versions"].values(), key=lambda e: e["seq"])

    def entry(self, version: str) -> dict[str, Any]:
        m = self.manifest()
        e = m["versions"].get(version)
        if e is None:
            raise _unknown(m, version)
        return e

    def artifact(self, version: str) -> Path:
        """The file of ``version``'s model."""
        return self.path / f"{version}.pkl"

    def champion(self) -> str | None:
        return self.manifest().get("champion")

    def latest(self) -> str | None:
        vs = self.versions()
        return vs[-1]["version"] if vs else None

    def _artifact(self, version: str, size: int | None = None) -> bytes:
        """The artifact's bytes: of a regular file only (a FIFO in its place held the watcher
        for good, a link to /dev/zero read 2.4 GB: a QA pass), read up to its entry's ``size``
        or ARTIFACT_READ_BYTES, whichever is more, else MAX_ARTIFACT_BYTES."""
        try:
            limit = MAX_ARTIFACT_BYTES if size is None else max(size, ARTIFACT_READ_BYTES)
            # without a key only this user's files: anyone who could write the registry had
            # their pickle run in fds run, fds train, `fds models show --verify` (a registry
            # shared with another user, or the default models/registry under a shared working
            # folder: a security review); with one, the signature decides
            return read_regular(self.artifact(version), limit, own=self.key is None)
        except ConfigError as e:
            raise ArtifactError(
                f"artifact of {version} {e}; or set {KEY_ENV} on the trainer and every scorer "
                "(the signature then decides)",
                local=True,
            ) from None
        except FileNotFoundError:
            raise ArtifactError(
                f"artifact of {version} is missing from {self.path}", local=True
            ) from None
        except OSError as e:  # (a folder in its place, no permission, an I/O error: fds run
            raise ArtifactError(  # did not start, where a missing file is retried: a QA pass)
                f"artifact of {version} cannot be read from {self.path}: {e.strerror or e}",
                local=True,
            ) from None

    def load_bytes(self, version: str) -> tuple[bytes, dict[str, Any]]:
        e = self.entry(version)
        return self._artifact(version, e.get("size")), e

    def verify_file(self, version: str, entry: Mapping[str, Any]) -> None:
        """Check ``version``'s artifact against its entry (sha256, HMAC): nothing unpickled."""
        data = self._artifact(version, entry.get("size"))
        try:
            verify(data, sha256=entry.get("sha256", ""), signature=entry.get("hmac"), key=self.key)
        except ArtifactError as e:
            raise self._naming(version, e) from e

    def load(self, version: str) -> Any:
        """The model of ``version``, verified (sha256, HMAC when keyed, and then its entry's
        signed fields: the manifest is a file too, and an old artifact copied under a new id
        with invented counts and legit rate was served, a QA pass) before unpickling."""
        data, e = self.load_bytes(version)
        try:
            return load_verified(
                data, sha256=e["sha256"], signature=e.get("hmac"), key=self.key,
                then=functools.partial(self.check_fields, e),
            )  # fmt: skip
        except ArtifactError as exc:
            raise self._naming(version, exc) from exc

    def _naming(self, version: str, e: ArtifactError) -> ArtifactError:
        """``e`` naming the version and its file (`fds train` said only "artifact sha256
        mismatch")."""
        return ArtifactError(
            f"{version} ({self.artifact(version)}): {e}", local=e.local, bad_model=e.bad_model
        )

    # -- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        # (owner-only, as the registry's files: it was 0644, a QA pass)
        path = self.path / ".lock"
        try:
            fd = owner_only(path)
        except OSError as e:  # (a folder or a link there: said raw, "[Errno 40] Too many
            if e.errno not in (errno.EISDIR, errno.ELOOP):  # levels of symbolic links")
                raise
            what = "a folder" if e.errno == errno.EISDIR else "a link"
            raise ConfigError(
                f"the registry's lock is {what}, not a file: remove it (fds makes it again)",
                where=str(path),
            ) from None
        if self.shared:
            _owned_as(fd, self.path / ".lock")
        with os.fdopen(fd, "a+b") as lock:
            if not _lock_within(lock, LOCK_QUIET_S):  # (`fds models promote` waited without
                # a word behind a writer that hung holding it, a review)
                log.warning(
                    'model registry="%s": waiting for its lock, held by another writer for over '
                    "%.0f s (fds train publishing, an fds models command, a scorer's verdict)",
                    self.path, LOCK_QUIET_S,
                )  # fmt: skip
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._sweep_temp()
                m = self.manifest()
                self._dropped = []
                yield m
                data = json.dumps(m, indent=1, sort_keys=True).encode()
                write_atomic(self._manifest_path, data, keep_owner=self.shared)
                # artifacts retention dropped go once the manifest no longer lists them (a
                # crash in between leaves a file, never an entry without one)
                for path in self._dropped:
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        pass
                    except OSError as e:  # (the change is made: a failed publish was retried
                        # as a new version, this one never announced, a review)
                        log.warning("%s is no longer in the registry but could not be removed "
                                    "(%s): remove it by hand", path, describe(e))  # fmt: skip
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _sweep_temp(self) -> None:
        """Remove the temporary files of writes a kill cut short (each a whole artifact: 51 MB
        after 12 kills, a review): every write is made holding the lock, so those older than
        TEMP_AGE_S are no live writer's."""
        old = time.time() - TEMP_AGE_S
        for f in self.path.glob(".*"):
            if _TEMP.fullmatch(f.name):
                with contextlib.suppress(OSError):
                    if f.lstat().st_mtime < old:
                        f.unlink()

    def publish(
        self,
        model: Any,
        *,
        spec: dict[str, Any],
        parent: str | None = None,
        labels_learned: int = 0,
        evaluation: dict[str, Any] | None = None,
        event_time: float | None = None,
    ) -> dict[str, Any]:
        """Pickle ``model`` and publish it as the next version; returns its manifest entry."""
        return self.publish_bytes(
            pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL),
            spec=spec,
            parent=parent,
            labels_learned=labels_learned,
            evaluation=evaluation,
            event_time=event_time,
        )

    def publish_bytes(self, data: bytes, **meta: Any) -> dict[str, Any]:
        with self._locked() as m:
            # (past every version's seq whatever `next` says: one edited out of the manifest
            # made the next publish v000001 again, over the champion's file, a review)
            seq = max([m.get("next") or 1, *(e["seq"] + 1 for e in m["versions"].values())])
            version = f"v{seq:06d}"
            write_atomic(self.artifact(version), data, keep_owner=self.shared)
            entry = make_entry(data, version=version, seq=seq, key=self.key, **meta)
            m["versions"][version] = entry
            back = rolled_back_in(m, version)
            if back is not None:  # (a rollback between the trainer's check and this publish)
                entry["status"], entry["rejected_because"] = "rejected", _learned_from(back)
            m["next"] = seq + 1
            self._retain(m)
        return entry

    def check_import(self, data: bytes, fields: Mapping[str, Any]) -> None:
        """Raise :class:`ArtifactError` unless :meth:`import_version` may take ``data``: a
        well-formed version id, the announced size, and :func:`verify` with this registry's
        key. Nothing is written or unpickled."""
        version = str(fields.get("version"))
        if not _VERSION_ID.fullmatch(version):
            raise ArtifactError(f"invalid version id {version!r}: expected v followed by digits")
        if fields.get("size") is not None and fields["size"] != len(data):
            raise ArtifactError(
                f"artifact size {len(data)} differs from the announced {fields['size']}"
            )
        if not isinstance(fields.get("spec") or {}, dict):  # (kept, it made every later read
            raise ArtifactError(  # of the manifest refuse it: a review)
                f"announced spec of {version} is no mapping: {type(fields['spec']).__name__}"
            )
        named, spec_name = fields.get("name"), (fields.get("spec") or {}).get("name")
        if named is not None and named != spec_name:
            # (the name is not signed, the spec is: a signed version of one model was taken
            # for another's under a renamed announcement, a QA pass; a spec naming no model
            # could be announced under any name)
            raise ArtifactError(
                f"{version} is announced as model {named!r} but its spec names "
                f"{'no model' if spec_name is None else repr(spec_name)}: refused"
            )
        verify(data, sha256=fields.get("sha256") or "", signature=fields.get("hmac"), key=self.key)
        self.check_fields(fields)

    def check_fields(self, fields: Mapping[str, Any]) -> None:
        """Raise :class:`ArtifactError` unless the fields of a version (announced, or its
        manifest entry) carry this registry's signature (``fields_hmac``; nothing to check
        without a key)."""
        version = str(fields.get("version"))
        signed, key = fields.get("fields_hmac"), self.key
        if key and not signed:
            raise ArtifactError(
                f"announced fields of {version} are not signed but {KEY_ENV} is set: its id "
                "and counts cannot be trusted (a trainer older than fields_hmac: upgrade it, "
                "and publish again)"
            )
        if key and not hmac.compare_digest(sign_fields(fields, key), str(signed)):
            raise ArtifactError(
                f"announced fields of {version} do not match their signature (its id, "
                "counts or evaluation were altered, in its announcement or the registry's "
                "manifest.json): refused"
            )

    def import_version(
        self, data: bytes, fields: Mapping[str, Any], *, keep: bool = False
    ) -> dict[str, Any] | None:
        """Add a version published by another registry, under its own id and manifest fields
        (``keep``: kept by this import's retention however old: a champion about to be
        followed, which it removed at once, a QA pass).

        ``fields`` holds the :data:`ENTRY_FIELDS` of the original entry (other keys are
        ignored). ``data`` is checked first (:meth:`check_import`) and never unpickled. Returns
        the new entry, or ``None`` when the version is already here with the same sha256
        (idempotent). Raises :class:`ArtifactError` when the artifact does not verify or this
        registry holds a different artifact under that id.

        >>> import tempfile
        >>> src, dst = Registry(tempfile.mkdtemp()), Registry(tempfile.mkdtemp())
        >>> e = src.publish({"w": 1.0}, spec={"name": "demo"})
        >>> data, _ = src.load_bytes(e["version"])
        >>> dst.import_version(data, e)["version"], dst.import_version(data, e)
        ('v000001', None)
        >>> dst.load("v000001")
        {'w': 1.0}
        """
        self.check_import(data, fields)
        version = str(fields["version"])
        seq = int(version[1:])
        entry = {k: fields.get(k) for k in ENTRY_FIELDS}
        entry.update(
            seq=seq,
            spec=entry["spec"] or {},
            created_at=entry["created_at"] or format_ts(time.time()),
            labels_learned=entry["labels_learned"] or 0,
            evaluation=entry["evaluation"] or {},
            size=len(data),
            status="published",
        )
        with self._locked() as m:
            have = m["versions"].get(version)
            if have is not None:
                if have["sha256"] == entry["sha256"]:
                    return None
                raise ArtifactError(
                    f"{version} is already in {self.path} with a different artifact: versions "
                    "of one model must come from one trainer registry"
                )
            write_atomic(self.artifact(version), data, keep_owner=self.shared)
            m["versions"][version] = entry
            m["next"] = max(m.get("next") or 1, seq + 1)
            self._retain(m, version if keep else None)
        return entry

    def _retain(self, m: dict[str, Any], also: str | None = None) -> None:
        entries = sorted(m["versions"].values(), key=lambda e: e["seq"])
        champ = m.get("champion")
        keep = {e["version"] for e in entries[-self.retain :]} | {also}
        if champ:
            keep.add(champ)
            parent = m["versions"].get(champ, {}).get("parent")
            if parent:
                keep.add(parent)
        # challengers in a shadow contest now (a few: one a dead scorer left is released)
        shadows = [e["version"] for e in entries if e.get("status") == "shadow"]
        keep.update(shadows[-MAX_SHADOWS:])
        # the champions of recent changes: what a rollback may return to
        for h in m.get("history", [])[-self.retain :]:
            for v in (h["from"], h["to"]):
                if v and m["versions"].get(v, {}).get("status") != "rejected":
                    keep.add(v)
        parents = m.setdefault("parents", {})  # of versions removed: lines stay whole
        # ... and how those rolled back were (a line learned from one was servable again once
        # it was removed: a QA pass)
        back = m.setdefault(ROLLED_BACK, {})
        champions = {h.get("to") for h in m.get("history", [])}
        for e in entries:
            v = e["version"]
            if v not in keep:
                del m["versions"][v]
                self._dropped.append(self.artifact(v))  # (see _locked)
                parents[v] = e.get("parent")
                if e.get("status") == "rejected":
                    how = {k: e[k] for k in ("broken", "rejected_because") if e.get(k)}
                    if v in champions:
                        how["champion"] = True
                    if _rolled_back(how, followed=True):
                        back[v] = how
        for kept in (parents, back):
            for v in list(kept)[:-MAX_PARENTS]:  # the oldest go
                del kept[v]

    def _set_champion(
        self, version: str | Callable[[dict[str, Any]], str], status: str, reason: str
    ) -> dict[str, Any]:
        """``version``, or a function choosing it from the manifest under the lock."""
        with self._locked() as m:
            if callable(version):
                version = version(m)
                self.verify_file(version, m["versions"].get(version) or {})
            return _champion_in(m, version, status, reason)

    def promote(
        self,
        version: str,
        reason: str = "manual",
        *,
        reject_current: bool = False,
        unless_rejected: bool = False,
        over: str | None = None,
    ) -> dict[str, Any]:
        """Make ``version`` the champion (scorers pick it up on their next poll); the current
        one is retired, or rejected with ``reject_current`` (a scorer's automatic rollback).
        ``unless_rejected``: refused (:class:`ConfigError`) when ``version`` is rejected here
        (a scorer's verdict on a version rejected meanwhile, by :meth:`follow`); ``over``:
        refused when the champion is no longer ``over`` (the champion the scorer judged
        against: another was followed or promoted by hand meanwhile, and a contest against
        the old one overrode it, a QA pass)."""
        status = "rolled-back" if reject_current else "champion"
        if not unless_rejected:
            return self._set_champion(version, status, reason)
        with self._locked() as m:
            if (m["versions"].get(version) or {}).get("status") == "rejected":
                raise ConfigError(f"{version} was rejected in the registry meanwhile: not promoted")
            champ = m.get("champion")
            if over is not None and champ not in (None, over, version):
                raise ConfigError(
                    f"the champion is {champ} now, not {over} as judged against: not promoted"
                )
            return _champion_in(m, version, status, reason)

    def follow(
        self, champion: str | None, rejected: Iterable[str], mark: str, reason: str,
        *, again: bool = False, issued: list[Any] | None = None, passed_over: Any = None,
    ) -> list[str]:  # fmt: skip
        """Take another registry's lifecycle (a trainer's, through the models topic): make
        ``champion`` the champion (when held here; the current one rejected if it is in
        ``rejected``) and mark ``rejected`` rejected. Done once per ``mark`` (kept in the
        manifest): the same lifecycle announced again (a restarted trainer) changes nothing,
        so this registry's own verdicts since stand; ``again``: followed all the same (a
        restarted scorer, whose verdicts the trainer judged or never got: a verdict lost at
        its stop left it on its own champion for good, a review). A ``champion`` not held here
        leaves the mark unkept: the same lifecycle is followed when read again (a restart).
        ``issued``: the lifecycle's number (:meth:`issue`), kept as ``followed_issued``;
        ``passed_over``: the newest seq a champion set by hand there passed over
        (:func:`passed_over`), kept with the change. Returns the changes made."""
        with self._locked() as m:
            if m.get("followed") == mark and not again:
                return []
            out, versions, old = [], m["versions"], m.get("champion")
            if not champion or champion in versions:
                m["followed"] = mark
                if issued is not None:
                    before = m.get("followed_issued")
                    if isinstance(before, list) and before and before[0] != issued[0]:
                        # a trainer registry replaced (moved, made anew): its lifecycles,
                        # replayed, are refused (see retired_trainer), the last 20 kept
                        left = [i for i in m.get("retired_ids", []) if i != issued[0]]
                        m["retired_ids"] = [*left, before[0]][-20:]
                    m["followed_issued"] = issued
            refused = set(rejected)
            if champion and champion in versions and champion != old:
                # (the lifecycle lists what the trainer's registry rejected with it: a line
                # rejected here as well diverged, e.g. the line of a promotion of ours that
                # the trainer did not take, a review)
                status = "rolled-back" if old in refused else "champion"
                _champion_in(m, champion, status, reason, line=False)
                if isinstance(passed_over, int):
                    m["history"][-1]["passed_over"] = passed_over
                out.append(f"champion {old or 'none'} -> {champion}")
            for v in sorted(refused):
                e = versions.get(v)
                if e is not None and e["status"] != "rejected" and v != m.get("champion"):
                    e["status"], e["rejected_because"] = "rejected", reason
                    out.append(f"rejected {v}")
            return out

    def rollback(self, reason: str = "manual") -> dict[str, Any]:
        """Return to the previous champion (from the history); its successor is rejected.
        A rejected version is never returned to: a second rollback goes further back."""

        def previous(m: dict[str, Any]) -> str:
            champ = m.get("champion")
            for h in reversed(m.get("history", [])):
                before = m["versions"].get(h["from"] or "")
                if h["from"] == h["to"]:  # a promotion of the champion itself (older releases)
                    continue
                if h["to"] == champ and before is not None and before["status"] != "rejected":
                    return str(h["from"])
            raise ConfigError("nothing to roll back to: no earlier champion in the registry")

        # said before the lock is taken too: taking it made a .lock in an empty folder, left
        # there (a QA pass); under the lock it is chosen again, from the manifest then
        previous(self.manifest())
        return self._set_champion(previous, "rolled-back", reason)

    def judge(
        self,
        verdict: str,
        version: str,
        other: str | None,
        reason: str,
        record: tuple[str, int] | None = None,
        digest: str | None = None,
    ) -> tuple[bool, str]:
        """Take a scorer's contest verdict on ``version`` (a trainer's registry, through the
        models topic): ``shadow`` (a contest of it began: kept by retention until its
        verdict), ``promote`` it over champion ``other`` (or over none), ``reject`` it, or
        ``rollback`` from it, the champion, to ``other``. The first verdict stands: one that
        no longer fits (another scorer's came first, or a promotion by hand: the champion moved
        on, the version was rejected or promoted) changes nothing. ``record`` (the models
        topic's partition and offset of the verdict) is judged once: a restarted trainer reads
        the topic again, and an old verdict undid a promotion by hand (a QA pass). The time a
        verdict was made is not compared: it is another machine's clock (a review). ``digest``
        (of what the verdict signs) is judged once too, at any offset: the same signed verdict
        sent again undid a champion chosen by hand since (a second security pass); the last
        :data:`MAX_VERDICTS_KEPT` are kept.

        Returns ``(changed, what)``: the change made, or why none was (said by the trainer,
        whose lifecycle, announced again, puts the scorer that sent it back on its champion).
        """
        with self._locked() as m:
            if record is not None:
                judged = m.setdefault("judged", {})
                if record[1] < judged.get(record[0], 0):
                    return False, f"judged before (offset {record[1]} of {record[0]})"
                judged[record[0]] = record[1] + 1
                if verdict != "shadow":  # (a verdict answered: the lifecycle is announced)
                    m["answered"] = int(m.get("answered", 0)) + 1
            if digest is not None:
                seen = m.setdefault("verdicts", [])
                if digest in seen:
                    return False, "the same verdict was judged before (sent again)"
                seen.append(digest)
                del seen[:-MAX_VERDICTS_KEPT]
            versions, champ = m["versions"], m.get("champion")
            e = versions.get(version)
            if e is None:
                seq, newest = seq_of(version), (m.get("next") or 1) - 1
                return False, f"{version} is not in the registry" + (
                    " (removed by its retention)" if 0 < seq <= newest
                    else f" (never published here: this registry's newest is v{newest:06d}; "
                    "another trainer's?)"
                )  # fmt: skip
            if e["status"] == "rejected":
                return False, f"{version} was rejected first"
            if verdict == "shadow":
                if e["status"] != "published":
                    return False, f"{version} is {e['status']} already"
                e["status"] = "shadow"
                return True, f"{version} in a shadow contest (kept until its verdict)"
            if verdict == "promote" and champ != version and champ in (None, other):
                _champion_in(m, version, "champion", reason)
                return True, f"champion {champ or 'none'} -> {version}"
            if verdict == "reject" and champ != version:
                e["status"], e["rejected_because"] = "rejected", reason
                return True, f"rejected {version}"
            back = versions.get(other or "")
            if verdict == "rollback" and champ == version and back and back["status"] != "rejected":
                _champion_in(m, str(other), "rolled-back", reason)
                return True, f"champion {version} -> {other} (rolled back)"
            return False, f"it no longer fits: the champion is {champ or 'none'}"

    def issue(self) -> list[Any]:
        """The number of the next lifecycle this registry announces, with its id (made once):
        ``[id, n]``, ``n`` increasing. A scorer refuses a lifecycle older than one it followed
        from the same registry: whoever could write to the models topic could replay an old
        signed one (a review); a registry made anew has another id."""
        with self._locked() as m:
            m["lifecycles"] = n = int(m.get("lifecycles", 0)) + 1
            return [m.setdefault("id", secrets.token_hex(8)), n]

    def judged_before(self, ends: Mapping[str, int]) -> None:
        """Forget the verdicts judged at offsets a models-topic partition no longer reaches
        (``ends``: its end offsets; the topic deleted and made again): its new verdicts
        were taken for ones judged before."""
        judged = self.manifest().get("judged") or {}
        if all(judged.get(p, 0) <= end for p, end in ends.items()):
            return
        with self._locked() as m:
            judged = m.setdefault("judged", {})
            for p, end in ends.items():
                if judged.get(p, 0) > end:
                    log.warning("models topic partition %s ends at offset %d, below the %d "
                                "judged: made again, its verdicts are judged from its start",
                                p, end, judged[p])  # fmt: skip
                    judged[p] = 0

    def mark_shadow(self, version: str) -> None:
        """A scorer runs ``version`` as a challenger: retention keeps it until its verdict
        (``promote`` or ``reject``), however many versions are published meanwhile."""
        with self._locked() as m:
            e = m["versions"].get(version)
            if e is not None and e["status"] == "published":
                e["status"] = "shadow"

    def reject(self, version: str, reason: str, *, broken: bool = False) -> None:
        """Mark ``version`` rejected (never the champion: promoted meanwhile, it stays).
        ``broken``: the model itself fails its canary (a NaN score), for every scorer: no
        trainer goes on learning from it (:func:`rolled_back_in`)."""
        with self._locked() as m:
            if version in m["versions"] and version != m.get("champion"):
                m["versions"][version]["status"] = "rejected"
                m["versions"][version]["rejected_because"] = reason
                if broken:
                    m["versions"][version]["broken"] = True


def _unknown(m: Mapping[str, Any], version: str) -> ConfigError:
    """No ``version`` in manifest ``m``: one numbered before its newest was removed by its
    retention (a trainer publishing fast removed one listed a second before: "unknown", a QA
    pass)."""
    seq = int(version[1:]) if version[:1] == "v" and version[1:].isdigit() else None
    newest = max((e["seq"] for e in m["versions"].values()), default=0)
    if seq is not None and 0 < seq < max(newest, m.get("next") or 0):
        return ConfigError(
            f"model version {version!r} is no longer in the registry: removed by its retention "
            "(the newest versions, the champion and those in a contest are kept); `fds models "
            "list` shows the versions"
        )
    return ConfigError(f"unknown model version {version!r}: `fds models list` shows the versions")


def _champion_in(
    m: dict[str, Any], version: str, status: str, reason: str, *, line: bool = True
) -> dict[str, Any]:
    """Make ``version`` the champion of manifest ``m`` (under its lock); the current one is
    retired (``status`` champion) or rejected, and with ``line`` the versions learned on from
    it (not through ``version``, nor those ``version`` learned from); recorded in the history,
    with the newest version's seq then (what a choice by hand passed over)."""
    if version not in m["versions"]:
        raise _unknown(m, version)
    old = m.get("champion")
    if old == version:  # already the champion: nothing changes, nothing recorded
        return dict(m["versions"][version])
    if old and old in m["versions"]:
        m["versions"][old]["status"] = "retired" if status == "champion" else "rejected"
        if status != "champion":
            m["versions"][old]["rejected_because"] = reason
    m["versions"][version]["status"] = "champion"
    m["versions"][version].pop("rejected_because", None)  # (promoted with --force: it
    m["champion"] = version  # kept the reason it was rejected, a QA pass)
    seq = m["versions"][version].get("seq", 0)
    for e in m["versions"].values():  # contests of older versions end with it (the scorers'
        if e["status"] == "shadow" and e.get("seq", 0) < seq:  # rule): not in one any more
            e["status"] = "published"  # (`fds models list` showed them so for good, a QA pass)
    if line and status != "champion" and old in m["versions"]:  # rolled back: the versions
        # learned from it go with it (one learned on from it won its contest 12 s after a
        # rollback by hand, and served what had been rolled back: a QA pass), but not those
        # the champion restored learned from (an older version promoted by hand and rolled
        # back rejected the restored one's own parents: a QA pass)
        ancestry = set(line_of(m, version))
        for v, e in m["versions"].items():
            if (
                v not in ancestry
                and e["status"] in ("published", "shadow")
                and old in line_of(m, v, version)[1:]
            ):
                e["status"], e["rejected_because"] = "rejected", _learned_from(old)
    newest = max((e.get("seq", 0) for e in m["versions"].values()), default=0)
    m.setdefault("history", []).append(
        {"at": format_ts(time.time()), "from": old, "to": version, "why": reason, "newest": newest}
    )
    del m["history"][:-100]  # the last 100 changes are plenty for an audit
    return dict(m["versions"][version])


#: Parents of versions removed by retention kept in the manifest (``parents``), the oldest
#: forgotten first: a line of versions stays whole over that many removed (a rollback of a
#: champion that served while 10 more were published rejected none of them: a review).
MAX_PARENTS = 1_000


#: The reason of a rejection taken from a trainer's registry through the models topic
#: (:meth:`Registry.follow`): rolled back there, or a lost contest; a scorer cannot tell which.
FOLLOWED_REASON = "the trainer's registry (models topic)"
#: Why a scorer serves a version that replaced a champion which had learned fewer than
#: ``promote.warmup_labels`` examples (no contest): a promotion its trainer is told of too.
WARM_UP = "warm-up"


def line_of(m: Mapping[str, Any], version: str, stop: str | None = None) -> list[str]:
    """``version`` and the versions it learned on from (its parent, theirs ...) in manifest
    ``m`` (removed ones by their ``parents``), newest first, up to ``stop`` (left out)."""
    line, versions, parents = [], m["versions"], m.get("parents") or {}
    v: Any = version
    while isinstance(v, str) and v != stop and v not in line:
        if v in versions:
            parent = versions[v].get("parent")
        elif v in parents:
            parent = parents[v]
        else:
            break
        line.append(v)
        v = parent
    return line


def rolled_back_in(m: Mapping[str, Any], version: str, *, followed: bool = False) -> str | None:
    """The newest version of ``version``'s line since the champion (:func:`line_of`, itself
    included, the champion and what it learned from left out: a champion promoted out of a
    rolled-back line set the trainer back to it at every publish, a review) that was rolled
    back: rejected after it had been champion, or as broken (its model failed its canary:
    a trainer without a checkpoint went on from a version with a NaN weight, and every version
    after it was rejected too, a QA pass); or None. ``followed``: or rejected through a
    followed lifecycle (:data:`FOLLOWED_REASON`), which may have been a rollback there: a
    scorer's registry cannot tell it from a lost contest."""
    champ = m.get("champion")
    champions = {h.get("to") for h in m.get("history", [])}
    versions, ancestry = m["versions"], set(line_of(m, champ)) if champ else set()
    removed = m.get(ROLLED_BACK) or {}

    def back(v: str) -> bool:
        if v in versions:
            e = versions[v]
            return e["status"] == "rejected" and _rolled_back(
                {**e, "champion": v in champions}, followed
            )
        return v in removed and _rolled_back(removed[v], followed)

    return next((v for v in line_of(m, version, champ) if v not in ancestry and back(v)), None)


def rolled_back_entry(m: Mapping[str, Any], version: str) -> Mapping[str, Any]:
    """The manifest entry of ``version`` as :func:`rolled_back_in` returned it: its own, or
    what retention kept of it (``rejected_because``, ``broken``) once it removed it."""
    return m["versions"].get(version) or (m.get(ROLLED_BACK) or {}).get(version) or {}


#: The manifest's record of versions retention removed that had been rolled back (see
#: :func:`_rolled_back`), by version: a line learned from one stays refused.
ROLLED_BACK = "rolled_back"


def _rolled_back(e: Mapping[str, Any], followed: bool) -> bool:
    """Was the rejected version of entry ``e`` rolled back: champion before (``champion``),
    broken, or (``followed``) rejected through a followed lifecycle?"""
    if e.get("champion") or e.get("broken"):
        return True
    return followed and e.get("rejected_because") == FOLLOWED_REASON


def passed_over(m: Mapping[str, Any]) -> int:
    """The seq of the newest version published before the champion of manifest ``m`` was set
    by hand (`fds models promote|rollback`, here or in the trainer's registry a lifecycle
    came from), or -1: the person chose it over them, and the running scorers had served or
    contested them already. A scorer started later served the newest of them as a new
    version (a warm-up wrote it back as champion: a QA pass). (By the seq the change
    recorded, not by time: two machines' clocks, a review.)"""
    last = (m.get("history") or [{}])[-1]
    seq = last.get("passed_over")
    if seq is None and str(last.get("why", "")).startswith("manual"):
        seq = last.get("newest")
    return seq if isinstance(seq, int) else -1


def _learned_from(version: str) -> str:
    return f"learned from {version}, rolled back"


def make_entry(
    data: bytes,
    *,
    version: str,
    seq: int,
    key: bytes | None,
    spec: dict[str, Any],
    parent: str | None = None,
    labels_learned: int = 0,
    evaluation: dict[str, Any] | None = None,
    event_time: float | None = None,
) -> dict[str, Any]:
    """A manifest entry for artifact bytes ``data`` (sha256 and, with ``key``, the HMACs of
    the artifact and of the entry's :data:`SIGNED_FIELDS`)."""
    entry: dict[str, Any] = {
        "version": version,
        "seq": seq,
        "spec": spec,
        "parent": parent,
        "created_at": format_ts(time.time()),
        "event_time": format_ts(event_time) if event_time is not None else None,
        "labels_learned": labels_learned,
        "evaluation": evaluation or {},
        "sha256": hashlib.sha256(data).hexdigest(),
        "hmac": sign(data, key) if key else None,
        "size": len(data),
        "status": "published",
    }
    entry["fields_hmac"] = sign_fields(entry, key) if key else None
    return entry
