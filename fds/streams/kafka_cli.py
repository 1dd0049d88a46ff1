"""CLI doors to Kafka: ``fds kafka up|down|status|topics``, ``fds run|produce|train``.

A thin layer over :mod:`fds.streams.kafka_kit` and :mod:`fds.streams.kafka`; the lead wires
:func:`register` into ``fds/cli.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from fds.cli import file_path, positive_float
from fds.errors import ConfigError
from fds.streams import kafka_kit

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``kafka``, ``run``, ``produce`` and ``train`` to the ``fds`` command line."""
    # kafka-python logs every connection at INFO; its warnings and errors are what users need.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    kafka = subparsers.add_parser("kafka", help="a local single-node Apache Kafka broker")
    ksub = kafka.add_subparsers(dest="kafka_cmd", required=True, metavar="{up,down,status,topics}")

    def common(p: argparse.ArgumentParser, *, found_by_dir: bool = False) -> None:
        if found_by_dir:  # down, status: the data dir names the broker; ports are checked
            # against it (they were ignored: `down --port 19592` stopped the default broker)
            checked = "; the broker is the --data-dir's, and these must be its own"
            p.add_argument("--port", type=_port, default=None, help="client port" + checked)
            p.add_argument("--controller-port", type=_port, default=None,
                           help="KRaft controller port" + checked)  # fmt: skip
        else:
            p.add_argument(
                "--port", type=_port, default=None,
                help=f"client port (default: the data dir's, else {kafka_kit.DEFAULT_PORT})",
            )  # fmt: skip
            p.add_argument(
                "--controller-port", type=_port, default=None,
                help="KRaft controller port (default: the data dir's, else --port + 1)",
            )  # fmt: skip
        p.add_argument(
            "--data-dir", type=_data_dir, default=None,
            help="broker data dir (default $FDS_KAFKA_DIR or ~/.cache/fds/kafka/run)",
        )  # fmt: skip

    p = ksub.add_parser("up", help="start the broker (resolving jars on first use); idempotent")
    common(p)
    p.add_argument(
        "--timeout", type=positive_float, default=kafka_kit.START_TIMEOUT_S,
        help="seconds to wait for the broker to accept connections",
    )  # fmt: skip
    p.add_argument(
        "--secure-port", type=_port, default=None,
        help="also listen for SASL_SSL clients (SCRAM-SHA-512 over TLS, a CA of the data dir's "
        "own) on this port; fixed when the data dir is first formatted",
    )  # fmt: skip
    p.add_argument("--no-topics", action="store_true", help="do not create streams/topics.yaml")
    p.set_defaults(func=_up)
    p = ksub.add_parser("down", help="stop the broker (SIGTERM, then SIGKILL)")
    common(p, found_by_dir=True)
    p.add_argument("--wipe", action="store_true", help="also delete the data dir (all topics)")
    p.set_defaults(func=_down)
    p = ksub.add_parser("status", help="is the broker running and reachable?")
    common(p, found_by_dir=True)
    p.set_defaults(func=_status)
    from fds.streams import settings as ksettings  # (pydantic: not for the kit's own commands)

    p = ksub.add_parser("topics", help="create the topics of streams/topics.yaml (idempotent)")
    p.add_argument(
        "--file", type=file_path("topic specs file"), default=kafka_kit.TOPICS_FILE,
        help="topic specs YAML",
    )  # fmt: skip
    p.add_argument(
        "--prefix", type=_prefix, default="",
        help="prepended to every topic name, e.g. prod. (default: none)",
    )  # fmt: skip
    ksettings.add_settings_flags(p, ksettings.CONNECTION_SETTINGS)  # --bootstrap, security
    p.set_defaults(func=_topics)

    from fds.streams import kafka as kstream  # the runner pulls in more; keep the kit light
    from fds.streams import produce, train

    kstream.register_run(subparsers)
    produce.register_produce(subparsers)

    train.register_train(subparsers)


def _port(text: str) -> int:
    """argparse type: a TCP port, 1-65535 (a port over it ended ``fds kafka up`` in a
    traceback: a QA pass)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: give a whole number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535; got {port}")
    return port


def _prefix(text: str) -> str:
    """argparse type: a topic name prefix that makes Kafka topic names of the kit's (`a b`
    was refused by the broker, exit 1, a QA pass), its longest one included."""
    from fds.streams.settings import check_topic

    try:
        check_topic(text + "state-changelog.index")  # (the kit's longest name)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is no topic name prefix: with the kit's names it must make Kafka "
            "topic names (up to 249 ASCII letters, digits, '.', '_' and '-'); e.g. prod."
        ) from None
    return text


def _data_dir(text: str) -> Path:
    """argparse type: a broker data dir, not empty (`''` started a broker in the working
    directory) and no file (a FileExistsError: a QA pass)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: give a folder (default $FDS_KAFKA_DIR)")
    path = Path(text).expanduser()
    there = next(p for p in (path, *path.parents) if p.exists())  # (a file on the way: a raw
    if not there.is_dir():  # NotADirectoryError from status and down, a QA pass)
        which = text if there == path else f"{text}: {there}"
        raise argparse.ArgumentTypeError(f"{which} is a file, not a folder: give a folder")
    return path


def _up(args: argparse.Namespace) -> int:
    ports = [("--port", args.port), ("--controller-port", args.controller_port)]
    ports += [("--secure-port", args.secure_port)]
    ports = [(flag, port) for flag, port in ports if port is not None]
    for i, (flag, port) in enumerate(ports):
        for other, same in ports[:i]:
            if port == same:  # (the broker's own check failed as a Java stack trace: a QA pass)
                raise ConfigError(
                    f"{other} and {flag} are both {port}: each listener needs a port of its own"
                )
    bootstrap = kafka_kit.up(
        args.port, args.controller_port, args.data_dir, timeout=args.timeout,
        secure_port=args.secure_port,
    )  # fmt: skip
    if not args.no_topics:
        kafka_kit.create_topics(bootstrap)
    print(bootstrap)
    _print_secure(args.data_dir)
    default = kafka_kit.DEFAULT_BOOTSTRAP
    if bootstrap != default and os.environ.get("FDS_BOOTSTRAP") != bootstrap:
        # (the README's next commands went on to whatever answered on the default port, with
        # no error: a README walk on a shared machine)
        also = f"; and `fds kafka status|down` --data-dir {args.data_dir}" if args.data_dir else ""
        print(
            f"note: fds's commands connect to {default} unless told: give them --bootstrap "
            f"{bootstrap}, or `export FDS_BOOTSTRAP={bootstrap}`{also}",
            file=sys.stderr,
        )
    return 0


def _print_secure(data_dir: Path | None) -> None:
    """How clients connect to the SASL_SSL listener, if the broker has one."""
    sec = kafka_kit.secure_listener(data_dir)
    if sec is not None:
        c = sec.client_settings()
        print(
            f"SASL_SSL on {c['bootstrap']}: --bootstrap {c['bootstrap']} --security-protocol "
            f"SASL_SSL --sasl-mechanism {c['sasl_mechanism']} --sasl-username "
            f"{c['sasl_plain_username']} --ssl-cafile {c['ssl_cafile']}, and the password "
            f"(FDS_SASL_PLAIN_PASSWORD) is in {Path(c['ssl_cafile']).parents[1] / 'secure.json'}"
        )


def _its_ports(args: argparse.Namespace) -> None:
    """``--port`` / ``--controller-port`` given to ``down`` or ``status`` must be those of the
    data dir's broker (the data dir, not a port, says which broker)."""
    if args.port is None and args.controller_port is None:
        return
    ddir = kafka_kit.data_dir_of(args.data_dir)
    kit = kafka_kit.read_kit(ddir)
    if not kit and kafka_kit.status(ddir).pid is None:  # (no broker ever: nothing to mistake,
        return  # down and status say so; `down --port P --data-dir NEW` exited 2, a QA pass)
    given_ports = (
        ("--port", args.port, "port"),
        ("--controller-port", args.controller_port, "controller_port"),
    )
    for flag, given, key in given_ports:
        if given is not None and kit.get(key) != given:
            raise ConfigError(
                f"{flag} {given}: the data dir {ddir} "
                + (f"is a broker on {kit[key]}, not {given}" if key in kit else "holds no broker")
                + f"; a data dir, not a port, names the broker: give the --data-dir that "
                f"`fds kafka up {flag} {given}` used (or leave {flag} out)"
            )


def _down(args: argparse.Namespace) -> int:
    _its_ports(args)
    ddir = kafka_kit.data_dir_of(args.data_dir)
    ever = (ddir / "kit.json").exists()  # (read before a wipe: after it, a crashed broker's
    # dir was said never to have had one, a QA pass)
    stopped = kafka_kit.down(ddir, wipe=args.wipe)
    # (a mistyped --data-dir said only "not running", as if the broker were stopped: a QA
    # pass; still exit 0: down is idempotent)
    never = f": no broker was ever started with the data dir {ddir}"
    said = "stopped" if stopped else "not running" + ("" if ever else never)
    print(said + (f"; its data dir {ddir} wiped" if args.wipe and ever else ""))
    return 0


def _status(args: argparse.Namespace) -> int:
    _its_ports(args)
    st = kafka_kit.status(args.data_dir)
    state = "running" if st.running else "stopped"
    if st.running:
        state += ", reachable" if st.reachable else ", NOT reachable"
    if st.bootstrap is None and not st.running:  # (`pid=None bootstrap=None`: a QA pass)
        print(f"stopped: no broker was ever started with the data dir {st.data_dir}")
        return 1
    pid = f" pid={st.pid}" if st.running else ""
    print(f"{state}{pid} bootstrap={st.bootstrap} data_dir={st.data_dir} log={st.log_file}")
    why = kafka_kit.exit_reason(args.data_dir)
    if why is not None:
        print(f"the broker exited without `fds kafka down`: {why}")
    _print_secure(args.data_dir)
    return 0 if st.reachable else 1


def _topics(args: argparse.Namespace) -> int:
    from fds.streams.settings import settings_from

    s = settings_from(args)
    client = {k: v for k, v in s.client_config().items() if k != "bootstrap_servers"}
    client["bootstrap_timeout_ms"] = s.timeout_ms
    names = kafka_kit.create_topics(
        s.bootstrap, kafka_kit.load_topic_specs(args.file), prefix=args.prefix,
        client_config=client,
    )  # fmt: skip
    for logical, name in names.items():
        print(f"{logical}\t{name}")
    for warning in _other_topics(s, args.prefix, set(names.values())):
        log.warning("%s", warning)
    return 0


def _other_topics(s: Any, prefix: str, made: set[str]) -> list[str]:
    """What to say when a topic the settings name (given, not a default) is not among those
    made (a deployment's --config with prefixed topics: `fds kafka topics --config` made the
    kit's), or a prefix runs into the names (``prodtransactions``).

    >>> from fds.streams.settings import load_settings
    >>> s = load_settings(input_topic="p.tx")
    >>> for said in _other_topics(s, "p", {"ptransactions", "pdecisions"}):
    ...     print(said)
    --prefix 'p' runs into the names (pdecisions): end it with '.', e.g. --prefix p.
    the settings' input_topic 'p.tx' (--input-topic) is none of the topics made: fds run needs it (make it, or fix the setting)
    """  # noqa: E501
    said = []
    if prefix and prefix[-1] not in ".-_":
        said.append(
            f"--prefix {prefix!r} runs into the names ({min(made)}): end it with '.', e.g. "
            f"--prefix {prefix}."
        )
    for setting in ("input_topic", "output_topic", "dlq_topic", "labels_topic", "state_topic",
                    "models_topic"):  # fmt: skip
        topic, given = getattr(s, setting), s.given_as(setting)
        if topic == "none" and setting == "models_topic":  # (none: no models topic)
            continue
        if topic is not None and given and topic not in made:
            said.append(
                f"the settings' {setting} {topic!r} ({given}) is none of the topics made: "
                "fds run needs it (make it, or fix the setting)"
            )
    return said
