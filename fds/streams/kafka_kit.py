"""A local single-node Apache Kafka broker (KRaft, broker+controller) for development and tests.

The jars come from Maven Central through ``streams/kafka/pom.xml`` and are cached under
``~/.cache/fds/kafka/<version>/lib``; the broker's data, log and pid file live in a data dir
(``$FDS_KAFKA_DIR`` or ``~/.cache/fds/kafka/run``). Everything is idempotent: :func:`up` on a
running broker returns at once; :func:`down` on a stopped one does nothing.

Layout of the data dir::

    kit.json            ports and version the dir was formatted for
    secure.json, tls/   with ``secure_port``: the SCRAM password and the TLS key store (0600)
    server.properties   rendered from streams/kafka/server.properties.template
    broker.log          the broker's log (log4j2, INFO; rolled over at $FDS_KAFKA_LOG_MB, 20
                        MB, into broker.log.1 and .2)
    broker.out          the JVM's own stdout/stderr (what is not logged: a crash's last words)
    broker.pid          pid of the running broker JVM
    kraft/              the KRaft log dir (metadata and topic data)

Examples
--------
>>> render_properties(19092, 19093, Path("/tmp/x")).splitlines()[0]
'# Single-node Apache Kafka (KRaft, combined broker+controller) for local development and tests.'
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pydantic
from kafka import KafkaConsumer
from kafka.errors import CorruptRecordError, KafkaTimeoutError, UnsupportedCodecError

from fds import shipped
from fds.errors import ConfigError, FdsError, describe
from fds.models.registry import write_atomic
from fds.timeutil import WAKE_S

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_CONTROLLER_PORT",
    "DEFAULT_PORT",
    "KAFKA_VERSION",
    "Call",
    "ClientErrors",
    "ClientRefused",
    "Consumer",
    "KitStatus",
    "Secure",
    "UnreadableRecords",
    "create_topics",
    "data_dir_default",
    "delete_topics",
    "down",
    "ensure_jars",
    "load_topic_specs",
    "render_properties",
    "secure_listener",
    "status",
    "up",
]

log = logging.getLogger(__name__)

# Off Kafka's 9092/9093 so the kit never collides with a broker the user already runs.
DEFAULT_PORT = 19092
#: Where fds's clients connect unless told (``KafkaSettings.bootstrap``): the kit's default.
DEFAULT_BOOTSTRAP = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_CONTROLLER_PORT = 19093
# Matches streams/kafka/pom.xml; override with FDS_KAFKA_VERSION for another 4.x release.
KAFKA_VERSION = os.environ.get("FDS_KAFKA_VERSION", "4.1.1")
# The SASL_SSL listener's client identity (``up(secure_port=...)``).
SECURE_USER = "fds"
SECURE_MECHANISM = "SCRAM-SHA-512"
# An explicit heap: the JVM default is a quarter of RAM, far more than a test broker needs.
JVM_HEAP = ("-Xms512m", "-Xmx1g")
#: broker.log rolls over at this many MB (FDS_KAFKA_LOG_MB), two older files kept: 60 MB at
#: most, days of a busy test suite's log at INFO (the start alone logs ~60 KB).
LOG_MB = 20
#: The JVM's own stdout/stderr, beside broker.log; put aside as broker.out.1 past OUT_MAX_BYTES
#: at a start (the JVM prints little there: a crash's last words; each start writes
#: OUT_START first, and only what follows the last one is read back).
OUT_FILE = "broker.out"
LOG_FILE = "broker.log"
#: The files and folders the kit writes in a data dir (see :func:`_kit_file`).
KIT_FILES = frozenset({
    ".up.lock", "kit.json", "broker.pid", "server.properties", "secure.json", "kraft", "tls",
    LOG_FILE, OUT_FILE,
})  # fmt: skip
LOST = "lost+found"
#: The kit's temporary files in a data dir (the SCRAM credentials' format arguments).
TEMP_FILES = (".format-args.",)
#: What the broker's JVM may leave in its working directory, the data dir: a crash's error
#: report and compiler replay file (hs_err_pid<N>.log, replay_pid<N>.log).
JVM_FILES = ("hs_err_pid", "replay_pid")
OUT_MAX_BYTES = 1 << 20
OUT_START = "--- fds kafka up: the broker starts"
# A cold JVM start plus KRaft bootstrap takes ~5-10 s on 2 cores; allow for a loaded CI machine.
START_TIMEOUT_S = 90.0
# The broker's controlled shutdown normally takes 1-3 s; past this it is killed.
STOP_TIMEOUT_S = 30.0

KIT_DIR = Path(os.environ.get("FDS_KAFKA_KIT", shipped.ROOT / "streams" / "kafka"))
TOPICS_FILE = shipped.ROOT / "streams" / "topics.yaml"


T = TypeVar("T")


class Call:
    """``fn()`` on a daemon thread of its own (one that never returns must not keep the
    process from exiting, as a pool's worker would): ``done`` is set with its outcome."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self._out: Any = None
        self._exc: BaseException | None = None
        threading.Thread(target=self._run, name="fds-broker-call", daemon=True).start()

    def _run(self) -> None:
        try:
            self._out = self.fn()
        except BaseException as exc:  # handed to the waiting thread
            self._exc = exc
        finally:
            self.done.set()

    def result(self) -> Any:
        if self._exc is not None:
            raise self._exc
        return self._out


class UnreadableRecords(FdsError):
    """Records of an input the client cannot read: a batch whose checksum fails (damaged on
    the broker's disk) or in a compression the client cannot decode."""


class Consumer(KafkaConsumer):
    """The ``KafkaConsumer`` every fds reader uses: a batch it cannot read raises
    :class:`UnreadableRecords`, naming where (each reader decides to stop or read again: never
    poll past it, the batch would be skipped). kafka-python 3.0.12 raises the error once, then
    loops for ever inside the next ``poll`` (the failed batch stays first in line, empty): a
    service that spun at 100 % of a core, deaf to SIGTERM, after one lz4 batch (codecs were not
    installed then).
    """

    def poll(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().poll(*args, **kwargs)
        except (CorruptRecordError, UnsupportedCodecError) as exc:
            what = (
                "is in a compression this client cannot decode"
                if isinstance(exc, UnsupportedCodecError)
                else "fails its checksum (damaged on the broker)"
            )
            raise UnreadableRecords(
                f"a record batch of {self._failed_at()} {what} ({describe(exc)})"
            ) from exc

    def _failed_at(self) -> str:
        """Where the batch that failed is: kafka-python keeps it first in line (a private
        attribute; without it, every partition assigned)."""
        failed: Any = getattr(getattr(self, "_fetcher", None), "_next_partition_records", None)
        tp = getattr(failed, "topic_partition", None)
        offset = getattr(failed, "next_fetch_offset", None)
        if tp is not None and offset is not None:
            return f"{tp.topic}[{tp.partition}] at offset {offset}"
        return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(self.assignment()))


def flush_within(
    producer: Any, timeout: float, cap: Callable[[float], float] | None = None
) -> None:
    """``producer.flush(timeout)`` as waits of at most :data:`fds.timeutil.WAKE_S`, so that a
    SIGTERM or a Ctrl-C is handled at once (one flush of the whole broker timeout held it for
    that long: `fds produce` in an outage, a loaded test run). ``cap(timeout)``: how much
    longer it may wait from now, read again at each step, so a stop that comes meanwhile
    shortens the wait from then on (the earliest end found stands). Raises
    ``KafkaTimeoutError`` once the wait has ended with records still unacknowledged."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if cap is not None:
            deadline = min(deadline, now + cap(timeout))
        left = deadline - now
        try:
            producer.flush(timeout=max(min(WAKE_S, left), 0.0))
            return
        except KafkaTimeoutError:
            if left <= WAKE_S:
                raise


def close_producer(producer: Any, timeout: float) -> None:
    """Close a ``KafkaProducer`` within ``timeout`` seconds, dropping the records no broker
    acknowledged by then (their futures fail). kafka-python's ``close`` raises
    ``KafkaTimeoutError`` instead and stays open: it masked the error that ended the work (the
    records sent, a SIGTERM's exit code) and its ``__del__`` printed the traceback again (a
    QA pass). kafka-python has no public abort: its sender's ``force_close`` does it."""
    try:
        producer.close(timeout=timeout)
    except Exception:  # (KafkaTimeoutError: records left; anything else, closed as well)
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(1.0)  # (fails the undelivered batches, closes the network client:
            # milliseconds; 1 s at most over ``timeout``)
        with contextlib.suppress(Exception):
            producer.close(timeout=0)
        if getattr(producer, "_closed", True) is False:  # the sender outlived its join (a
            # loaded machine): what is left is dropped, and its __del__ flushed again at exit,
            # printing a KafkaTimeoutError traceback after the summary (a test under load)
            producer._closed = True


class Stopped(Exception):
    """A stop (SIGTERM) came while a client connected (:meth:`ClientErrors.connect`)."""


class ClientRefused(ConnectionError):
    """The broker refused the client in a way no retry changes (:meth:`ClientErrors.connect`).
    An ``OSError``, like the other ways a connection fails."""


class ClientErrors(logging.Handler):
    """``with ClientErrors() as errors:`` keeps the reason of the last connection kafka-python
    saw fail meanwhile. A TLS handshake or a SASL login the broker refused surfaces only as a
    bootstrap timeout ("Unable to bootstrap"), as if the broker were down; the client's log
    says why, and :meth:`hint` says what to check.

    >>> e = ClientErrors()
    >>> e.last = "SaslAuthenticationFailedError: invalid credentials"
    >>> e.hint("is the broker up?").split(";")[0]
    'the broker refused the login (SaslAuthenticationFailedError: invalid credentials)'
    """

    _REASON = re.compile(
        r"(?:Bootstrap connection to (\S+)|Connection) failed: (.*?)(?: \(backoff .*\))?$"
    )
    # Reasons no retry changes: the broker refused the login, the client does not trust the
    # broker's certificate (or its name), a TLS port answered a PLAINTEXT client. (A dropped
    # connection or a TLS handshake cut short is also what a broker going down looks like.)
    _FINAL = (
        "AuthenticationFailed", "certificate verify failed", "Invalid frame length",
        "IllegalSaslState",  # (a SASL client on a port without SASL)
        "UnsupportedSaslMechanism",  # (a mechanism the port does not enable)
    )  # fmt: skip

    # A TLS handshake the broker ended at once this many times in a row from one address is
    # final too: a TLS client spoken to a port without TLS waited out the broker timeout.
    # (OpenSSL 3's reason; OpenSSL 1.1 names none, and such a client waits the timeout there.)
    _EOF, _EOF_FINAL = "UNEXPECTED_EOF_WHILE_READING", 3

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None
        self._eofs: dict[str, int] = {}  # bootstrap node -> handshakes it ended at once
        # bootstrap node -> the reason in _FINAL it refused with, since connect() began
        self.refused: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        m = self._REASON.search(record.getMessage())
        if m is None:
            return
        node, why = m.groups()
        if node is not None and any(k in why for k in self._FINAL):
            self.refused.setdefault(node, why)
        elif node is not None and self._EOF in why:  # (a TLS client on a port without TLS:
            self._eofs[node] = n = self._eofs.get(node, 0) + 1  # the broker took the hello
            if n >= self._EOF_FINAL:  # for a request and hung up, every time; a broker going
                self.refused.setdefault(node, why)  # down is refused, or cut once: a QA pass)
        elif node is not None:  # (in a row: another outcome starts the count again)
            self._eofs.pop(node, None)
        # a refusal outranks the disconnects around it; a request timed out (the attempt the
        # bootstrap deadline cut short: "after 160 ms") says less than what it replaces (a
        # wrong password read as a broker down, on a loaded machine)
        if not (self.last and (self._telling(self.last) or "RequestTimedOut" in why)):
            self.last = why

    @staticmethod
    def _telling(why: str) -> bool:
        return any(
            k in why for k in ("Authentication", "SSL", "Handshake", "frame length", "Mechanism")
        )

    def __enter__(self) -> ClientErrors:
        logging.getLogger("kafka").addHandler(self)
        return self

    def __exit__(self, *_: Any) -> None:
        logging.getLogger("kafka").removeHandler(self)

    def connect(
        self, make: Callable[[], T], servers: int = 1, stop: Callable[[], bool] | None = None
    ) -> T:
        """``make()``, a kafka-python client's constructor (it bootstraps, retrying until its
        ``bootstrap_timeout_ms``), on a :class:`Call`; given up at once with
        :class:`ClientRefused` once each of the ``servers`` bootstrap addresses refused it in
        a way no retry changes (``_FINAL``; kafka-python tries the next address after one
        that refuses): a wrong CA used to wait the whole broker timeout (60 s by default)
        before it was named. The abandoned constructor ends at its own timeout. ``stop()``
        true (a SIGTERM) raises :class:`Stopped` (it was heard after the broker timeout)."""
        self.refused, self._eofs = {}, {}
        call = Call(make)
        while not call.done.wait(0.05):
            if stop is not None and stop():
                raise Stopped("stopped while connecting to Kafka (nothing was consumed)")
            if len(self.refused) >= servers:
                raise ClientRefused(
                    f"Kafka refused the client: {next(iter(self.refused.values()))}"
                )
        return call.result()

    def explain(
        self, exc: BaseException, bootstrap: str, failed: str, default: str, protocol: str
    ) -> str:
        """The error of a client that could not connect to ``bootstrap``: refused (what the
        broker refused), else ``failed`` with the client's exception; then :meth:`hint`."""
        if isinstance(exc, ClientRefused):
            return f"Kafka at {bootstrap} refused the client: " + self.hint(default, protocol)
        return f"{failed} ({describe(exc)}); " + self.hint(default, protocol)

    def hint(self, default: str, protocol: str = "PLAINTEXT") -> str:
        """What to check, from the last failure and the client's ``security_protocol``: the
        login, TLS, the protocol, else ``default`` (with the client's reason when there is
        one). A refused SASL login mostly shows as a dropped connection, not as the broker's
        error (6 of 8 attempts in one measurement): with SASL, a drop points at the login."""
        why = self.last
        other = f"or its port speaks another protocol than {protocol}: check --security-protocol"
        if why is None:  # (an SSL client on a SASL_SSL port said nothing more: a QA pass)
            return default if protocol == "PLAINTEXT" else f"{default}; {other}"
        login = "check --sasl-username, the password (FDS_SASL_PLAIN_PASSWORD), --sasl-mechanism"
        if "IllegalSaslState" in why:  # (told "is the broker up?" after the timeout: a QA)
            return (
                f"the broker takes no SASL login on this port ({why}): a PLAINTEXT or SSL "
                f"listener spoken to with {protocol}? check --security-protocol and the port"
            )
        if "UnsupportedSaslMechanism" in why:  # (waited the broker timeout, then blamed the
            return (  # login's drop, or the broker: a QA pass)
                f"the broker enables no such SASL mechanism on this port ({why}): check "
                f"--sasl-mechanism (a kit broker's SASL_SSL port takes {SECURE_MECHANISM})"
            )
        if "Authentication" in why:
            return f"the broker refused the login ({why}); {login}"
        if "Hostname mismatch" in why or "doesn't match" in why:  # (blamed on the CA: a QA)
            return (
                f"the broker's certificate is not for the host in --bootstrap ({why}); connect "
                "by a name or address the certificate holds, or set ssl_check_hostname: false "
                "(FDS_SSL_CHECK_HOSTNAME=false)"
            )
        if self._EOF in why:  # (told to check the CA file: a QA pass)
            return (
                f"the broker ended the TLS handshake at once ({why}): a port without TLS "
                f"spoken to with {protocol}? check --security-protocol and the port"
            )
        if "SSL" in why or "Handshake" in why:
            return f"the TLS handshake failed ({why}); check --ssl-cafile and --security-protocol"
        dropped = "frame length" in why or "socket disconnected" in why
        if dropped and protocol == "SSL":
            return (
                f"the broker closed the connection after the TLS handshake ({why}): a SASL_SSL "
                "listener spoken to without a login? check --security-protocol"
            )
        if dropped and protocol.startswith("SASL"):
            return (
                f"the broker closed the connection during the login ({why}); {login} and "
                "--security-protocol"
            )
        if dropped:
            return (
                f"the broker closed the connection or answered in another protocol ({why}): a "
                "TLS or SASL port spoken to in PLAINTEXT? check --security-protocol"
            )
        return f"{default} (last client error: {why})"


def data_dir_default() -> Path:
    """The broker's data dir: ``$FDS_KAFKA_DIR`` or ``~/.cache/fds/kafka/run``.

    Examples
    --------
    >>> data_dir_default().name in {"run", os.path.basename(os.environ.get("FDS_KAFKA_DIR", ""))}
    True
    """
    env = os.environ.get("FDS_KAFKA_DIR")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "fds" / "kafka" / "run"
    return path.resolve()  # (a relative one: the broker, run in it, found no config, a QA pass)


def data_dir_of(data_dir: Path | str | None) -> Path:
    """The data dir ``data_dir`` names (the default when none), absolute with its links
    resolved, as ``up`` started its broker with: ``down`` and ``status`` given the same dir
    through a link or ``..`` lost track of a running broker (a QA pass)."""
    return Path(data_dir).expanduser().resolve() if data_dir else data_dir_default()


def _kit_file(name: str) -> bool:
    """Whether a data dir's entry ``name`` is one the kit writes: its lock, ports, pid, broker
    config, SASL secret, KRaft log, TLS files, broker logs (rolled too), the temporary files
    of its writes and what a crashed JVM leaves. ``down --wipe`` deletes these alone."""
    return name in KIT_FILES or name.startswith(
        (f"{LOG_FILE}.", f"{OUT_FILE}.", *(f".{f}." for f in KIT_FILES), *TEMP_FILES, *JVM_FILES)
    )


def _foreign(ddir: Path) -> list[str]:
    """The entries of ``ddir`` when it is no data dir of the kit's: a folder without the kit's
    record (:func:`_formatted`) holding files the kit does not write, which ``up`` refuses to
    start a broker in and ``down --wipe`` to delete (it deleted any folder it was given, a
    user's sources too: a QA pass). None for a data dir of the kit's, whatever else is in it
    (a core dump), an empty or missing folder; a file system's ``lost+found`` is no entry."""
    try:
        names = [p.name for p in ddir.iterdir() if p.name != LOST]
    except (FileNotFoundError, NotADirectoryError):  # (said by the mkdir that follows)
        return []
    except OSError as exc:
        raise ConfigError(
            f"cannot read the data dir {ddir}: {exc.strerror or exc}; give a folder you can "
            "read and write (--data-dir, or FDS_KAFKA_DIR)",
            where=str(ddir),
        ) from exc
    if _formatted(ddir):
        return []
    return sorted(name for name in names if not _kit_file(name))


def _formatted(ddir: Path) -> bool:
    """Whether ``ddir`` holds the kit's record of its broker: a ``kit.json`` of its ports (a
    folder of Apache Kafka's own configs holds a ``kraft/`` and a ``server.properties`` too,
    which a wipe took for the kit's: a review)."""
    try:
        return {"port", "controller_port"} <= read_kit(ddir).keys()
    except ConfigError:  # (a damaged record is none)
        return False


def _cache_dir(version: str) -> Path:
    return Path.home() / ".cache" / "fds" / "kafka" / version


def ensure_jars(version: str = KAFKA_VERSION) -> Path:
    """Resolve the broker's jars with Maven into the cache once; return the ``lib`` dir.

    A second call finds the completion marker and returns immediately.
    """
    lib = _cache_dir(version) / "lib"
    marker = lib / ".complete"
    if marker.exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise FdsError(
            "Maven (mvn) is not installed; it fetches the Kafka broker jars from Maven Central. "
            "Install it (apt-get install maven) or point --bootstrap at an existing broker."
        )
    pom = KIT_DIR / "pom.xml"
    if not pom.exists():
        raise FdsError(f"{pom} is missing; set FDS_KAFKA_KIT to the streams/kafka dir of fds")
    tmp = lib.with_name(f"lib.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-Dkafka.version={version}", f"-DoutputDirectory={tmp}",
    ]  # fmt: skip
    log.info("resolving Kafka %s jars with Maven into %s", version, lib)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise FdsError(
            f"Maven could not resolve Kafka {version} (exit {proc.returncode}); is Maven Central "
            f"reachable and does the version exist?\n{' '.join(cmd)}\n{tail}"
        )
    (tmp / ".complete").write_text(version + "\n")
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    return lib


def render_properties(
    port: int, controller_port: int, log_dir: Path, secure: Secure | None = None
) -> str:
    """``server.properties`` for a combined broker+controller on 127.0.0.1 (with ``secure``,
    also a SASL_SSL listener)."""
    template = (KIT_DIR / "server.properties.template").read_text()
    listener = mapping = extra = ""
    if secure is not None:
        listener = f",SECURE://127.0.0.1:{secure.port}"
        mapping = ",SECURE:SASL_SSL"
        extra = (
            "# The SASL_SSL listener (`fds kafka up --secure-port`): SCRAM-SHA-512 over TLS.\n"
            f"sasl.enabled.mechanisms={SECURE_MECHANISM}\n"
            f"listener.name.secure.{SECURE_MECHANISM.lower()}.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
            "ssl.keystore.type=PKCS12\n"
            f"ssl.keystore.location={secure.keystore}\n"
            f"ssl.keystore.password={secure.store_password}\n"
            f"ssl.key.password={secure.store_password}\n"
        )
    return (
        template.replace("{port}", str(port))
        .replace("{controller_port}", str(controller_port))
        .replace("{log_dir}", str(log_dir))
        .replace("{secure_listener}", listener)
        .replace("{secure_map}", mapping)
        .replace("{secure}", extra)
    )


@dataclass(frozen=True, slots=True)
class Secure:
    """The kit's SASL_SSL listener: SCRAM-SHA-512 over TLS, as production clusters run, so the
    client security settings of ``fds run``/``produce``/``train`` are tested against a real
    broker. The user and its password are created when the data dir is formatted; the broker's
    certificate (for 127.0.0.1) is signed by a CA of the data dir's own (``cafile``)."""

    port: int
    password: str  # SECURE_USER's
    store_password: str
    keystore: Path
    cafile: Path

    def client_settings(self) -> dict[str, Any]:
        """What a client needs (``KafkaSettings`` fields; the CLI's ``--security-protocol``,
        ``--sasl-mechanism``, ``--sasl-username``, ``--ssl-cafile`` and
        ``FDS_SASL_PLAIN_PASSWORD``)."""
        return {
            "bootstrap": f"127.0.0.1:{self.port}",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": SECURE_MECHANISM,
            "sasl_plain_username": SECURE_USER,
            "sasl_plain_password": self.password,
            "ssl_cafile": str(self.cafile),
        }


def secure_listener(data_dir: Path | str | None = None) -> Secure | None:
    """The SASL_SSL listener of the kit's broker in ``data_dir``, if it was set up with one."""
    ddir = data_dir_of(data_dir)
    path = ddir / "secure.json"
    if not path.exists():
        return None
    got = json.loads(path.read_text())
    tls = ddir / "tls"
    return Secure(got["port"], got["password"], got["store_password"], tls / "broker.p12",
                  tls / "ca.pem")  # fmt: skip


def _make_secure(ddir: Path, port: int) -> Secure:
    """Passwords (``secure.json``, 0600) and a TLS key store for 127.0.0.1 signed by a CA of
    the data dir's own, made with the JDK's keytool."""
    tls = ddir / "tls"
    tls.mkdir(mode=0o700, exist_ok=True)
    secret = {"port": port, "password": secrets.token_urlsafe(18),
              "store_password": secrets.token_urlsafe(18)}  # fmt: skip
    write_atomic(ddir / "secure.json", json.dumps(secret).encode())  # (mkstemp: 0600)
    sec = secure_listener(ddir)
    assert sec is not None
    keytool = str(Path(_java()).with_name("keytool"))
    # the password by the environment, not as an argument any local user could read in ps
    env = {**os.environ, "FDS_KIT_STOREPASS": sec.store_password}
    pw = ["-storetype", "PKCS12", "-storepass:env", "FDS_KIT_STOREPASS"]
    ca = ["-keystore", str(tls / "ca.p12"), *pw]
    broker = ["-keystore", str(sec.keystore), *pw]
    rsa = ["-keyalg", "RSA", "-keysize", "2048", "-validity", "3650"]
    steps = [
        ["-genkeypair", "-alias", "ca", "-dname", "CN=fds kit CA", *rsa, *ca,
         "-ext", "bc:c=ca:true", "-ext", "ku:c=keyCertSign,cRLSign"],
        ["-exportcert", "-alias", "ca", "-rfc", "-file", str(sec.cafile), *ca],
        ["-genkeypair", "-alias", "broker", "-dname", "CN=127.0.0.1", *rsa, *broker],
        ["-certreq", "-alias", "broker", "-file", str(tls / "broker.csr"), *broker],
        ["-gencert", "-alias", "ca", "-infile", str(tls / "broker.csr"), "-rfc",
         "-outfile", str(tls / "broker.pem"), "-validity", "3650", *ca,
         "-ext", "SAN=IP:127.0.0.1,DNS:localhost", "-ext", "eku=serverAuth"],
        ["-importcert", "-alias", "ca", "-file", str(sec.cafile), "-noprompt", *broker],
        ["-importcert", "-alias", "broker", "-file", str(tls / "broker.pem"), *broker],
    ]  # fmt: skip
    for step in steps:
        proc = subprocess.run(
            [keytool, *step], capture_output=True, text=True, check=False, env=env
        )
        if proc.returncode != 0:
            raise FdsError(f"keytool {step[0]} failed making the kit's TLS key store in {tls}:"
                           f"\n{(proc.stdout + proc.stderr)[-1500:]}")  # fmt: skip
    return sec


@dataclass(frozen=True, slots=True)
class KitStatus:
    """What :func:`status` reports about the local broker."""

    running: bool  # the recorded JVM process is alive
    reachable: bool  # a metadata request succeeded
    pid: int | None
    bootstrap: str | None
    data_dir: Path
    log_file: Path


def _wipe(ddir: Path) -> str:
    """The command that wipes ``ddir``, and only it (a bare ``--wipe`` wipes the default)."""
    return f"`fds kafka down --wipe --data-dir {shlex.quote(str(ddir))}`"


def read_kit(data_dir: Path) -> dict[str, Any]:
    """What ``data_dir`` was formatted for (``kit.json``: ports, version), or ``{}``; a file
    that is no such record is a :class:`ConfigError` naming it (a traceback: a QA pass)."""
    path = data_dir / "kit.json"
    try:
        kit = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (ValueError, OSError) as exc:
        kit = exc
    if not isinstance(kit, dict):
        raise ConfigError(
            f"{path} is damaged ({describe(kit) if isinstance(kit, Exception) else 'no record'}"
            f"): it says which ports the broker of {data_dir} was formatted for; write them back "
            '(e.g. {"port": 19092, "controller_port": 19093}), or '
            f"{_wipe(data_dir)} to start afresh",
            where=str(path),
        )
    return kit


def _read_pid(data_dir: Path) -> int | None:
    """The pid of our broker JVM if it is alive (and really is a Kafka broker), else None."""
    path = data_dir / "broker.pid"
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone (or no /proc: fall back to a signal probe)
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return pid
    # Guard against pid reuse: only a JVM running kafka.Kafka in this data dir counts (its
    # working directory, or its config's path whole: a dir whose path began another's stopped
    # that one, a QA pass; a broker an older release started in a dir it named through a link
    # has the link in its arguments, and runs in the dir: a review)
    args = cmdline.split(b"\0")
    config = str(data_dir / "server.properties").encode()
    try:
        in_dir = os.path.realpath(f"/proc/{pid}/cwd") == str(data_dir)
    except OSError:  # (gone meanwhile)
        return None
    if b"kafka.Kafka" not in args or not (in_dir or config in args):
        return None
    try:  # a zombie (exited child of this process) is not running
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return None
    except (OSError, IndexError):
        return None
    return pid


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _metadata_ok(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True when the broker answers a metadata request (a port alone may be a half-started JVM)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=ms, bootstrap_timeout_ms=ms
        )
    except (KafkaError, OSError):
        return False
    try:
        admin.describe_cluster()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def _last_lines(path: Path) -> list[str]:
    """The lines of the last 64 KB of ``path`` (none if unreadable)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - (1 << 16)))
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def _log_lines(log_file: Path, n: int | None = None) -> list[str]:
    """The last lines (``n`` of each) of the broker's log, then of the JVM's own output
    (broker.out) since its last start, when it wrote any (an older start's stood for a new
    crash's cause: a review)."""
    out = _last_lines(log_file.with_name(OUT_FILE))
    starts = [i for i, ln in enumerate(out) if ln.startswith(OUT_START)]
    out = out[starts[-1] + 1 :] if starts else out
    return [ln for lines in (_last_lines(log_file), out) for ln in lines[-n if n else 0 :]]


def _log_tail(log_file: Path, n: int = 25) -> str:
    return "\n".join(_log_lines(log_file, n)) or "(no log yet)"


def _log_properties(log_file: Path) -> list[str]:
    """The JVM flags of the kit's log4j2 configuration: the file it logs to (absolute: the
    broker runs in its data dir) and the size it rolls over at (FDS_KAFKA_LOG_MB, in MB;
    before, one broker.log grew for as long as the data dir was used)."""
    raw = os.environ.get("FDS_KAFKA_LOG_MB", "").strip() or str(LOG_MB)
    try:
        size = int(float(raw) * (1 << 20))
    except (ValueError, OverflowError):  # (inf: a traceback, a QA pass)
        size = 0
    if not 1024 <= size < (1 << 40):
        raise ConfigError(
            f"FDS_KAFKA_LOG_MB={raw!r} is not a size in MB from 0.001 to 1000000; give one "
            f"such as {LOG_MB} (the size broker.log rolls over at), or unset it"
        )
    path = str(log_file.resolve())
    return [
        f"-Dlog4j2.configurationFile={KIT_DIR / 'log4j2.properties'}",
        f"-Dfds.kit.log={path}",
        f"-Dfds.kit.log.rolled={path.replace('%', '%%')}",  # (a pattern: % is its escape)
        f"-Dfds.kit.log.size={size}",
    ]


def _random_cluster_id() -> str:
    # Kafka's Uuid.randomUuid(): 16 random bytes, URL-safe base64 without padding, never
    # starting with '-' (it would read as a command-line flag).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise FdsError("java is not installed; the local Kafka broker needs Java 17+")
    return java


def _quoted(arg: str) -> str:
    """``arg`` as one argument of a java launcher's @argfile.

    >>> print(_quoted('a b\\c"d'))
    "a b\\\\c\\"d"
    """
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _format(
    java: str, lib: Path, props: Path, log_file: Path, secure: Secure | None = None
) -> None:
    cmd = [
        java, "-Xmx256m", *_log_properties(log_file),
        "-cp", f"{lib}/*", "kafka.tools.StorageTool", "format", "--standalone",
        "-t", _random_cluster_id(), "-c", str(props),
    ]  # fmt: skip
    argfile = None
    if secure is not None:  # the SCRAM user, in the cluster metadata from the start
        cmd += ["--add-scram", f"{SECURE_MECHANISM}=[name={SECURE_USER},"
                f"password={secure.password}]"]  # fmt: skip
        # ... given in an argument file (0600) the java launcher reads: on its command line,
        # any local user read the password in ps (a security review), as the key store's is
        # kept out of it
        fd, argfile = tempfile.mkstemp(prefix=".format-args.", dir=log_file.parent)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(_quoted(a) for a in cmd[1:]) + "\n")
        cmd = [java, f"@{argfile}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    finally:
        if argfile is not None:
            os.unlink(argfile)
    with log_file.open("a") as f:
        f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise FdsError(f"formatting the KRaft dir failed (see {log_file}):\n{proc.stderr[-1500:]}")


def up(
    port: int | None = None,
    controller_port: int | None = None,
    data_dir: Path | str | None = None,
    *,
    timeout: float = START_TIMEOUT_S,
    secure_port: int | None = None,
) -> str:
    """Start the local broker (or find it running) and return its bootstrap address.

    Parameters
    ----------
    port, controller_port
        The client (PLAINTEXT) and controller listener ports on 127.0.0.1; by default the
        ones the data dir was formatted with (the client port was DEFAULT_PORT: `up --data-dir
        D` of a broker on another port was refused, a QA pass), else DEFAULT_PORT and ``port
        + 1`` (19093 for 19092: a second broker on ``--port 29492`` took 19093 as well, and
        the one of the two started last died binding it).
    data_dir
        Where the KRaft log dir, broker log and pid file live; formatted on first use.
    timeout
        Seconds to wait for the broker to answer a metadata request.
    secure_port
        Also listen for SASL_SSL clients (SCRAM-SHA-512 over TLS) on this port; how to
        connect: :func:`secure_listener`. Decided when the data dir is formatted (by default
        the one it was formatted with).

    Returns
    -------
    str
        ``"127.0.0.1:PORT"``.

    Raises
    ------
    ConfigError
        The data dir was formatted for other ports, or the port is taken by something else.
    FdsError
        The broker did not start in time or exited; the message includes the log's tail.
    """
    ddir = data_dir_of(data_dir)  # (absolute: the broker runs in it)
    made = not ddir.exists()
    if others := _foreign(ddir):
        raise ConfigError(
            f"{ddir} holds files that are not the kit's ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}): a broker's data dir is a folder of its "
            "own; give an empty or new folder (--data-dir, or FDS_KAFKA_DIR)",
            where=str(ddir),
        )
    try:  # (a raw FileNotFoundError for /proc/x, said as a failure of fds's: a QA pass)
        ddir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot make the data dir {ddir}: {exc.strerror or exc}; give a folder you can "
            "write (--data-dir, or FDS_KAFKA_DIR)"
        ) from exc
    try:
        # one `up` at a time per data dir: two at once would both start a broker
        with open(ddir / ".up.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            kit = read_kit(ddir) or {}
            if port is None:
                port = kit.get("port") or DEFAULT_PORT
            if secure_port is None:  # (fixed when formatted: `up --data-dir D` of a dir with
                secure_port = kit.get("secure_port")  # one was refused, "add --secure-port")
            if controller_port is None:
                controller_port = kit.get("controller_port") or next(
                    (p for p in (port + 1, port + 2, port - 1) if p <= 65535 and p != secure_port),
                    port - 2,
                )
            return _up(ddir, port, controller_port, timeout, secure_port)
    except ConfigError:  # refused before anything was written (a port in use): a data dir
        if made and [p.name for p in ddir.iterdir()] == [".up.lock"]:  # made for it goes
            shutil.rmtree(ddir, ignore_errors=True)  # (it was left empty: a QA pass)
        raise
    except OSError as e:  # (a full disk: `failed: OSError: [Errno 28] ...`, no path, a QA pass)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        raise FdsError(
            f"cannot write the broker's data dir {ddir}: {describe(e)}; free space on its disk "
            "or give another --data-dir"
        ) from None


def _warn_if_stale(ddir: Path, port: int, controller_port: int) -> None:
    """A running broker started from an older ``server.properties.template`` (fds was upgraded
    while it ran) keeps its settings until a restart: say so."""
    try:
        running = (ddir / "server.properties").read_text()
    except OSError:
        return
    if running != render_properties(port, controller_port, ddir / "kraft", secure_listener(ddir)):
        log.warning(
            "the kit's broker (data dir %s) runs with settings older than this fds's "
            "(streams/kafka/server.properties.template); `fds kafka down && fds kafka up` "
            "applies them", ddir,
        )  # fmt: skip


def _up(
    ddir: Path, port: int, controller_port: int, timeout: float, secure_port: int | None
) -> str:
    bootstrap = f"127.0.0.1:{port}"
    log_file = ddir / LOG_FILE
    kit = read_kit(ddir)
    want = (port, controller_port, secure_port)
    if kit and (kit.get("port"), kit.get("controller_port"), kit.get("secure_port")) != want:

        def ports(p: int | None, c: int | None, sp: int | None) -> str:
            return f"ports {p}/{c}" + (f" with a SASL_SSL port {sp}" if sp else "")

        had = (kit.get("port"), kit.get("controller_port"), kit.get("secure_port"))
        fix = f"use those (--port {had[0]} --controller-port {had[1]}"
        fix += f" --secure-port {had[2]})" if had[2] else ")"
        if had[:2] == want[:2]:  # only the secured listener differs: say which flag
            fix = f"add --secure-port {had[2]}" if had[2] else "drop --secure-port"
        raise ConfigError(
            f"{ddir} holds a broker formatted for {ports(*had)}, not {ports(*want)}; {fix}, "
            f"another --data-dir, or {_wipe(ddir)} to start afresh",
            where=str(ddir / "kit.json"),
        )
    pid = _read_pid(ddir)
    if pid is not None:
        if _wait_ready(bootstrap, lambda: _read_pid(ddir) == pid, log_file, timeout):
            log.info('the Kafka broker already runs pid="%d" bootstrap="%s"', pid, bootstrap)
            _warn_if_stale(ddir, port, controller_port)
            return bootstrap
        # alive but not answering: a second broker on the same data dir could only fail on
        # its lock and take over broker.pid, losing track of this one
        raise FdsError(
            f"the kit's broker (pid {pid}, data dir {ddir}) is running but did not answer "
            f"within {timeout:.0f} s; wait and retry, or `fds kafka down` it; see {log_file}:\n"
            + _log_tail(log_file)
        )
    _log_properties(log_file)  # (FDS_KAFKA_LOG_MB refused before anything is written)
    if _port_open(port):
        raise ConfigError(
            f"port {port} is already in use, not by the kit's broker of data dir {ddir} (by "
            "another program, or the kit's broker of another data dir: `fds kafka status "
            "--data-dir DIR` names it); stop it, or pass --port / point --bootstrap at it",
            where=f"127.0.0.1:{port}",
        )
    if _port_open(controller_port):  # (the broker died binding it, its log's tail for a reason)
        raise ConfigError(
            f"the controller port {controller_port} is already in use (another broker's?); "
            "pass another --controller-port, or stop what is using it",
            where=f"127.0.0.1:{controller_port}",
        )

    java = _java()
    lib = ensure_jars()
    ddir.mkdir(parents=True, exist_ok=True)
    formatted = (ddir / "kraft" / "meta.properties").exists()
    secure = None
    if secure_port is not None:
        secure = secure_listener(ddir) if formatted else _make_secure(ddir, secure_port)
        if secure is None:
            raise ConfigError(
                f"{ddir} was formatted without a SASL_SSL listener; use another --data-dir, or "
                f"{_wipe(ddir)} to start afresh",
                where=str(ddir),
            )
    props = ddir / "server.properties"  # 0600 (mkstemp): it holds the key store password
    write_atomic(props, render_properties(port, controller_port, ddir / "kraft", secure).encode())
    if not formatted:
        _format(java, lib, props, log_file, secure)
        kit = {"port": port, "controller_port": controller_port, "version": lib.parent.name}
        kit |= {"secure_port": secure_port} if secure_port else {}
        write_atomic(ddir / "kit.json", json.dumps(kit).encode())
    cmd = [
        java, *JVM_HEAP, "-XX:+UseG1GC", "-Djava.awt.headless=true", *_log_properties(log_file),
        "-cp", f"{lib}/*", "kafka.Kafka", str(props),
    ]  # fmt: skip
    out_file = log_file.with_name(OUT_FILE)  # (kept across starts, the last one's aside)
    with contextlib.suppress(OSError):
        if out_file.stat().st_size > OUT_MAX_BYTES:
            out_file.replace(out_file.with_name(OUT_FILE + ".1"))
    with out_file.open("ab") as out:
        out.write(f"{OUT_START} at {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd=ddir,
        )  # fmt: skip
    (ddir / "broker.pid").write_text(f"{proc.pid}\n")
    log.info('started Kafka broker pid="%d" bootstrap="%s" log="%s"', proc.pid, bootstrap, log_file)
    # Poll the child itself: right after fork its /proc cmdline is still Python's.
    try:
        ready = _wait_ready(bootstrap, lambda: proc.poll() is None, log_file, timeout)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM while it boots: the broker is not left
        # running, unready and unsaid (a QA pass of signals)
        log.warning("stopped while the broker started: stopping it (pid %d)", proc.pid)
        _stop_child(proc, ddir)
        raise
    if not ready:  # (down() did not know the child by its /proc cmdline, still Python's, and
        _stop_child(proc, ddir)  # left it running, unseen by the kit: a QA pass)
        raise FdsError(
            f"the Kafka broker did not become ready within {timeout:.0f} s; see {log_file}:\n"
            + _log_tail(log_file)
        )
    return bootstrap


def _stop_child(proc: subprocess.Popen[bytes], ddir: Path) -> None:
    """Stop the broker this ``up`` started and forget its pid."""
    proc.terminate()  # (the child itself: its /proc cmdline may still be Python's)
    try:
        proc.wait(5.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    (ddir / "broker.pid").unlink(missing_ok=True)


def _wait_ready(bootstrap: str, alive: Callable[[], bool], log_file: Path, timeout: float) -> bool:
    port = int(bootstrap.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            tail = _log_tail(log_file)
            # (two ups at once on one port, other data dirs: a Java stack trace alone, a QA)
            why = f"a port of it in use: another broker started meanwhile on {bootstrap}?"
            why = f" ({why})" if "Address already in use" in tail else ""
            raise FdsError(f"the Kafka broker exited{why}; see {log_file}:\n{tail}")
        if _port_open(port) and _metadata_ok(bootstrap):
            return True
        time.sleep(0.2)  # polling interval while the JVM boots, not a fixed wait
    return False


def down(
    data_dir: Path | str | None = None, *, timeout: float = STOP_TIMEOUT_S, wipe: bool = False
) -> bool:
    """Stop the local broker: SIGTERM (controlled shutdown), then SIGKILL after ``timeout``.

    Returns True when a running broker was stopped. ``wipe=True`` also deletes the data dir:
    the kit's files in it (:func:`_kit_file`; others are left, and said), and the folder once
    empty; a folder that is no data dir of the kit's (:func:`_foreign`) is refused before
    anything is stopped (:class:`ConfigError`).
    """
    ddir = data_dir_of(data_dir)
    if wipe and (others := _foreign(ddir)):
        raise ConfigError(
            f"{ddir} holds files the kit did not write ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}), so it is no broker data dir of the kit's: "
            "nothing was stopped or deleted; check --data-dir (or FDS_KAFKA_DIR)",
            where=str(ddir),
        )
    pid = _read_pid(ddir)
    stopped = False
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _read_pid(ddir) == pid and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)  # polling interval while the broker shuts down
        if _read_pid(ddir) == pid:
            log.warning('Kafka broker ignored SIGTERM for %.0f s; killing pid="%d"', timeout, pid)
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
        stopped = True
    (ddir / "broker.pid").unlink(missing_ok=True)
    if wipe and ddir.is_dir():
        left = []
        for entry in ddir.iterdir():
            if entry.name == LOST:
                continue
            if not _kit_file(entry.name):
                left.append(entry.name)
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if left:
            log.warning("left in the data dir %s (not the kit's): %s", ddir, ", ".join(left))
        with contextlib.suppress(OSError):
            ddir.rmdir()
    return stopped


def _reap(pid: int) -> None:
    """Collect the exit status if the broker is our own child (else it lingers as a zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def status(data_dir: Path | str | None = None) -> KitStatus:
    """Report whether the local broker runs and answers.

    Examples
    --------
    >>> status("/nonexistent/fds-kafka").running
    False
    """
    ddir = data_dir_of(data_dir)
    kit = read_kit(ddir)
    pid = _read_pid(ddir)
    bootstrap = f"127.0.0.1:{kit['port']}" if "port" in kit else None
    reachable = bool(pid and bootstrap and _port_open(kit["port"]) and _metadata_ok(bootstrap))
    return KitStatus(pid is not None, reachable, pid, bootstrap, ddir, ddir / LOG_FILE)


def exit_reason(data_dir: Path | str | None = None) -> str | None:
    """Why the kit's broker is down when it stopped without :func:`down` (its pid file left:
    it crashed, e.g. on a full disk): the last error line of its log; ``None`` when it was
    stopped or runs. (`fds kafka status` said just "stopped": a QA pass.)"""
    ddir = data_dir_of(data_dir)
    if not (ddir / "broker.pid").exists() or _read_pid(ddir) is not None:
        return None
    tail = _log_lines(ddir / LOG_FILE)
    said = [ln.strip() for ln in tail if "ERROR" in ln or "Exception" in ln or "Error:" in ln]
    return (said[-1][:300] if said else "nothing in its log") + f" ({ddir / LOG_FILE})"


def _whole_text(v: Any) -> Any:
    """A whole number written as text (`partitions: "6"`, taken before): that number."""
    return int(v) if isinstance(v, str) and v.strip().isdigit() else v


class _TopicSpec(pydantic.BaseModel):
    """One topic of a topic specs file (``streams/topics.yaml``); a key of its own (a
    description) is said and left out."""

    model_config = pydantic.ConfigDict(extra="allow", strict=True)
    name: str | None = None
    partitions: int = pydantic.Field(ge=1, le=1_000_000)
    replication_factor: int | None = pydantic.Field(default=None, ge=1, le=32_767)
    key: str | None = None  # (documentation: what the records are keyed by)
    configs: dict[str, str | int | float | bool] = {}
    _numbers = pydantic.field_validator("partitions", "replication_factor", mode="before")(
        _whole_text
    )


class _TopicsFile(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow", strict=True)
    replication_factor: int = pydantic.Field(default=1, ge=1, le=32_767)
    topics: dict[str, _TopicSpec]
    _numbers = pydantic.field_validator("replication_factor", mode="before")(_whole_text)


def _config_text(v: str | int | float | bool) -> str:
    """A topic config's value as Kafka reads it (YAML's ``true`` is ``true``, not ``True``)."""
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def load_topic_specs(path: Path | str = TOPICS_FILE) -> dict[str, dict[str, Any]]:
    """Read ``streams/topics.yaml``: logical name -> ``{name, partitions, ..., configs}``.

    Examples
    --------
    >>> specs = load_topic_specs()
    >>> specs["transactions"]["key"], specs["models"]["configs"]["cleanup.policy"]
    ('card_id', 'compact')
    """
    from fds.streams.files import invalid, read_yaml

    path = Path(path)
    # (fds's YAML reader, as for every file it reads: `partitions: abc` was a traceback,
    # `2.5` 2 partitions, an alias bomb ran out of memory, and nothing named a line: a QA pass)
    doc = read_yaml(path, "a topic specs file")
    try:
        spec = _TopicsFile.model_validate(doc)
    except pydantic.ValidationError as e:
        raise invalid(path, e, _TopicsFile, "a topic specs file") from None
    specs: dict[str, dict[str, Any]] = {}
    unknown = [*(spec.model_extra or {})]
    unknown += [f"topics.{n}.{k}" for n, t in spec.topics.items() for k in t.model_extra or {}]
    if unknown:  # (taken before, as documentation: said, not refused)
        log.warning("%s: keys fds does not read, left out: %s", path, ", ".join(unknown))
    for logical, t in spec.topics.items():
        specs[logical] = {
            "name": t.name or logical,
            "partitions": t.partitions,
            "replication_factor": t.replication_factor or spec.replication_factor,
            "key": t.key,
            "configs": {k: _config_text(v) for k, v in t.configs.items()},
        }
    if "state_index" in specs and "state_changelog" in specs:  # (where fds run looks for it)
        from fds.streams.state_topic import index_of

        specs["state_index"]["name"] = index_of(specs["state_changelog"]["name"])
    return specs


def create_topics(
    bootstrap: str,
    specs: dict[str, dict[str, Any]] | None = None,
    prefix: str = "",
    *,
    client_config: dict[str, Any] | None = None,
    timeout: float = 30.0,
) -> dict[str, str]:
    """Create the topics of ``specs`` (default: streams/topics.yaml); existing ones are kept.

    Returns logical name -> actual topic name (``prefix + name``), once every partition has a
    leader, so the caller can produce at once.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError, for_code

    specs = load_topic_specs() if specs is None else specs
    names = {logical: prefix + s["name"] for logical, s in specs.items()}
    from kafka.errors import KafkaError

    try:
        with ClientErrors() as errors:
            admin = errors.connect(
                lambda: KafkaAdminClient(bootstrap_servers=bootstrap, **(client_config or {})),
                len(bootstrap.split(",")),
            )
    except (KafkaError, OSError) as exc:
        raise FdsError(
            errors.explain(
                exc,
                bootstrap,
                f"cannot reach Kafka at {bootstrap} to create topics",
                "start the kit's broker (`fds kafka up`) or give --bootstrap",
                (client_config or {}).get("security_protocol", "PLAINTEXT"),
            )
        ) from exc
    try:
        new = {
            names[logical]: {
                "num_partitions": s["partitions"],
                "replication_factor": s["replication_factor"],
                "configs": s.get("configs") or {},
            }
            for logical, s in specs.items()
        }
        result = admin.create_topics(new, timeout_ms=int(timeout * 1000), raise_errors=False)
        existing, failed = [], {}
        for topic in result["topics"]:
            err = for_code(topic["error_code"])
            if topic["error_code"] and err is not TopicAlreadyExistsError:
                failed[topic["name"]] = f"{err.__name__}: {topic.get('error_message')}"
            elif topic["error_code"]:
                existing.append(topic["name"])
        made = sorted(set(new) - set(existing) - set(failed))
        if failed:  # (the first failure alone was said, the topics made beside it not: a QA pass)
            raise FdsError(
                "creating topic "
                + ", ".join(f"{name!r} failed ({why})" for name, why in failed.items())
                + (f"; made: {', '.join(made)}" if made else "")
                + (f"; there already: {', '.join(sorted(existing))}" if existing else "")
            )
        log.info(  # (which were made and which were there was not said: a QA pass)
            'topics made="%s" already_there="%s"', ",".join(made), ",".join(sorted(existing))
        )
        admin.wait_for_topics(list(names.values()), timeout_ms=int(timeout * 1000))
        if existing:
            _say_differences(admin, {n: new[n] for n in existing})
    finally:
        admin.close()
    return names


#: Topic configs at Kafka's defaults, which a broker may leave out of a description.
_TOPIC_DEFAULTS = {"cleanup.policy": "delete"}


def _say_differences(admin: Any, wanted: dict[str, dict[str, Any]]) -> None:
    """Warn of topics that existed already with other partitions or configs than their spec:
    they are kept as they are (a models topic that is not compacted loses versions to
    retention; it was accepted without a word: a QA pass)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    parts = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(wanted))}
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, name, list(spec["configs"]))
        for name, spec in wanted.items()
        if spec["configs"]
    ]
    # all values, defaults included (the default filter, "modified", hid a topic left at the
    # broker's 7-day retention: a review)
    configs = admin.describe_configs(resources, config_filter="all")["topic"] if resources else {}
    for name, spec in wanted.items():
        differ = []
        if parts.get(name) != spec["num_partitions"]:
            differ.append(f"{parts.get(name)} partitions (the spec: {spec['num_partitions']})")
        for key, value in spec["configs"].items():
            # (a key at the broker's default may not be listed: cleanup.policy's is delete)
            had = configs.get(name, {}).get(key, {}).get("value", _TOPIC_DEFAULTS.get(key))
            if had is not None and str(had) != str(value):
                differ.append(f"{key}={had} (the spec: {value})")
        if differ:
            log.warning(
                "topic %r exists with %s; it is kept as it is: change it (kafka-topics.sh "
                "--alter, kafka-configs.sh) or delete it and run `fds kafka topics` again",
                name, ", ".join(differ),
            )  # fmt: skip


def delete_topics(bootstrap: str, names: Iterable[str], *, timeout: float = 30.0) -> None:
    """Delete ``names`` (best effort: a topic already gone is fine). Tests and benchmarks
    remove what they created: every partition left behind is a log directory the kit's single
    broker loads, watches and lists, and thousands of them slow topic creation down."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics(list(names), timeout_ms=int(timeout * 1000), raise_errors=False)
    finally:
        admin.close()
