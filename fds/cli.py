"""The ``fds`` command line: a thin layer over the public API.

Each area registers its own subcommands (``register(subparsers)``); this module only wires
them together and turns errors into clear messages and exit codes (2: usage or config error,
1: failure).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import gc
import importlib
import logging
import math
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fds.errors import ConfigError, FdsError, describe
from fds.logs import configure_logging, say
from fds.shipped import ROOT

__all__ = ["build_parser", "main"]

# Areas that contribute subcommands, each exposing ``register(subparsers)``.
_COMMAND_MODULES = (
    "fds.commands",
    "fds.streams.simulate_cli",
    "fds.rules.cli",
    "fds.models.cli",
    "fds.bench",
    "fds.streams.kafka_cli",
)


_GLOBAL = ("-v", "--verbose", "-q", "--quiet", "--log-format")


class _Formatter(argparse.HelpFormatter):
    """Help that states each option's default, where its text does not already (a QA pass
    found most defaults unstated: --bootstrap, --warmup-days, the ports, ...)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and default not in (None, False, True, argparse.SUPPRESS)
            and "default" not in text
        ):
            # (a file shipped in the package: as the README names it, rules/default.yaml; said
            # shipped: a rules/default.yaml of the working folder is not it, a README walk)
            shown = default
            if isinstance(default, Path) and default.is_relative_to(ROOT):
                shown = f"the shipped {Path(*default.parts[-2:])}"
            text += f" (default: {str(shown).replace('%', '%%')})"
        return text


#: One thing named otherwise by another command: fds run's decisions topic is its output.
_SYNONYMS = {"--decisions-topic": "--output-topic", "--output-topic": "--decisions-topic"}


class _Parser(argparse.ArgumentParser):
    _hint: str | None = None
    argv: list[str] | None = None  # what main parses (None: sys.argv[1:])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        # no prefixes of long options: `fds train --model default` set the models topic
        # (--models-topic) to "default" without a word
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            chosen, options = self._chosen(ns)
            chosen._hint = self._did_you_mean(options, extras) or (
                f"run '{chosen.prog} --help' for its options" if chosen is not self else None
            )
            # (said by the command's own parser: `fds replay: error: ...` with its usage, as
            # every other error of a command; it was `fds: error:` with fds's usage, a QA pass)
            chosen.error("unrecognized arguments: " + " ".join(extras))
        # A command's own errors name it as argparse's do (`fds rules backtest: error:`; they
        # said `fds rules: error:`).
        ns.prog = self._chosen(ns)[0].prog
        return ns

    def _chosen(self, ns: argparse.Namespace) -> tuple[_Parser, list[str]]:
        """The parser of the (sub)command ``ns`` went through (``kafka up``) and its options."""
        parser: _Parser = self
        options = list(self._option_string_actions)
        while True:
            sub = next(
                (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None
            )
            name = getattr(ns, sub.dest, None) if sub is not None else None
            if sub is None or name not in sub.choices:
                return parser, options
            parser = sub.choices[name]
            options = list(parser._option_string_actions)  # (fds's own go before the command)

    @staticmethod
    def _did_you_mean(options: list[str], extras: list[str]) -> str | None:
        """``--bootstarp``: the closest option of the command, or of fds itself (``--quite``
        had no word: a QA pass), said to go before the command."""
        for arg in extras:
            name = arg.split("=", 1)[0]
            if _SYNONYMS.get(name) in options:  # (fds train's --decisions-topic on fds run was
                return f"{name}: did you mean {_SYNONYMS[name]}?"  # told --models-topic: a QA)
            if name.startswith("-") and name not in _GLOBAL:
                close = difflib.get_close_matches(name, [*options, *_GLOBAL], n=1, cutoff=0.7)
                if close and close[0] in _GLOBAL and close[0] not in options:
                    return f"{name}: did you mean {close[0]}? It goes before the command"
                if close:
                    return f"{name}: did you mean {close[0]}?"
        return None

    def error(self, message: str) -> None:  # type: ignore[override]
        argv = sys.argv[1:] if _Parser.argv is None else _Parser.argv
        m = re.search(r"invalid choice: (\S+)", message)
        subs = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        if self._hint is None and m:
            # the closest command (`fds modls`), else an option mistyped before it that left
            # its value for the command (`fds models --registy R list`): only R was said (a QA
            # pass). The choices from the parser: Python 3.12.9+ prints them unquoted.
            choices = [c for a in subs for c in a.choices]
            close = difflib.get_close_matches(m[1].strip("'\""), choices, n=1)
            known = list(self._option_string_actions)
            self._hint = (
                f"did you mean {close[0]}?"
                if close
                else self._did_you_mean(
                    known, [a for a in argv if a.startswith("-") and a.split("=")[0] not in known]
                )
            )
        if self._hint is None and message.startswith("the following arguments are required"):
            known = list(self._option_string_actions)  # (`fds simulate --dayz 3` was told only
            self._hint = self._did_you_mean(  # that --out is required: a QA pass)
                known, [a for a in argv if a.startswith("-") and a.split("=")[0] not in known]
            )
        missing = message.removeprefix("the following arguments are required:")
        names = {n for a in subs for n in (a.dest, a.metavar, "{" + ",".join(a.choices) + "}")}
        if missing != message and {m.strip() for m in missing.split(", ")} <= names:
            # (`fds bench` alone said "required: bench_cmd", a name of the code: a QA pass)
            message = f"give a command: {', '.join(c for a in subs for c in a.choices)}"
        hint = self._hint or f"run '{self.prog} --help' for help"
        if message.startswith("unrecognized arguments:"):
            extra = message.split(":", 1)[1].split()
            misplaced = [a for a in extra if a in _GLOBAL]
            yaml_file = [a for a in extra if a.lower().endswith((".yaml", ".yml"))]
            if misplaced:  # `fds replay f.csv -q`: the global options go first
                hint = f"{misplaced[0]} goes before the command: fds {misplaced[0]} COMMAND ..."
            takes = [
                o for o in ("--mapping", "--rules", "--model") if o in self._option_string_actions
            ]
            meant = "did you mean" in (self._hint or "")  # (`--maping m.yaml` keeps it: a walk)
            if yaml_file and takes and not misplaced and not meant:  # (`fds replay t.csv
                # m.yaml`, a QA pass)
                hint = (
                    f"a YAML file is given with its option: "
                    f"{' or '.join(f'{o} {yaml_file[0]}' for o in takes)}; see "
                    f"'{self.prog} --help'"
                )
        if _wants_json(argv):
            say(f"{self.prog}: error: {message} ({hint})")  # one JSON record (a QA pass)
            self.exit(2)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n  ({hint})\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fds",
        description="Real-time fraud detection: windowed features, YAML rules, adaptive model.",
    )
    from fds import __version__

    parser.add_argument("--version", action="version", version=f"fds {__version__}")
    loud = parser.add_mutually_exclusive_group()  # (`-v -q`: -v won without a word, a QA)
    loud.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    loud.add_argument(
        "-q", "--quiet", action="store_true",
        help="log warnings and errors only (a replay's model swaps are INFO lines)",
    )  # fmt: skip
    parser.add_argument(
        "--log-format",
        choices=("kv", "json"),
        default="kv",
        help='log lines as key="value" (default) or JSON',
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every long option of ``parser`` and of its commands."""
    flags: set[str] = set()
    for action in parser._actions:
        flags.update(o for o in action.option_strings if o.startswith("--") and o != "--help")
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                flags |= _flags(command)
    return flags


# Services that stop on SIGTERM once running: a SIGTERM while they start (imports, engine,
# model feed: seconds on a loaded machine) ends them with code 0 too, not by the signal
# (a review saw exit code 143 for every SIGTERM in the first ~4 s of `fds run`).
_SERVICES = frozenset({"run", "train"})


def _stopped_while_starting(signum: int, _frame: object) -> None:
    print(f"fds: stopped by signal {signum} while starting (nothing was consumed)", file=sys.stderr)
    raise SystemExit(0)


class _Terminated(KeyboardInterrupt):
    """SIGTERM to a command that is no service: stopped as Ctrl-C stops it (a replay between
    two events with its summary, a simulation removing its temporary files), exit code 143."""


_TERMINATED: list[int] = []  # the SIGTERM received, if any


def _terminate(signum: int, _frame: object) -> None:
    _TERMINATED.append(signum)
    raise _Terminated


def _command(argv: list[str]) -> str | None:
    """The command word of ``argv`` (after the global options)."""
    return _globals(argv)[0]


def _wants_json(argv: list[str]) -> bool:
    """Does ``argv`` ask for JSON logs (``--log-format json`` before the command)? Read before
    argparse, whose own errors come first."""
    return _globals(argv)[1] == "json"


def _globals(argv: list[str]) -> tuple[str | None, str | None]:
    """The command word of ``argv`` and the ``--log-format`` given before it."""
    fmt = None
    it = iter(argv)
    for tok in it:
        if tok == "--log-format":
            fmt = next(it, None)
        elif tok.startswith("--log-format="):
            fmt = tok.partition("=")[2]
        elif not tok.startswith("-"):
            return tok, fmt
    return None, fmt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fds`` console script (``argv`` ``None``: the process exits when
    this returns; in-process callers pass ``argv``)."""
    if argv is None:  # the console script (a service installs its own handler once running)
        service = _command(sys.argv[1:]) in _SERVICES
        signal.signal(signal.SIGTERM, _stopped_while_starting if service else _terminate)
    _Parser.argv = argv
    if _wants_json(sys.argv[1:] if argv is None else argv):  # (argparse's errors too)
        configure_logging("INFO", fmt="json")
    try:
        parser = build_parser()  # (imports every command's module: a while)
        args = parser.parse_args(argv)
    except _Terminated:
        return 143
    except KeyboardInterrupt:  # (a traceback, not JSON with --log-format json: a QA pass)
        return 130
    level = "DEBUG" if args.verbose else "WARNING" if args.quiet else "INFO"
    configure_logging(level, fmt=args.log_format)
    if any(k.upper().startswith("FDS_") for k in os.environ):  # (a typo of one was ignored
        from fds.streams.settings import warn_unknown_env  # without a word where no Kafka

        warn_unknown_env(_flags(parser), logging.getLogger("fds.cli"))  # settings are read:
        # FDS_FEATURE_KERNL=off, a QA pass; a hint of a flag only where a command has it)
    try:
        code = int(args.func(args) or 0)
        # (a summary printed after a SIGTERM: the status still says the signal stopped it)
        return 143 if code == 130 and _TERMINATED else code
    except _Terminated:  # (simulate, demo, bench ended without a word: a QA pass of signals)
        say(f"{args.prog}: stopped by SIGTERM", logging.WARNING)
        return 143
    except ConfigError as e:
        say(f"{args.prog}: error: {e}")
        return 2
    except FdsError as e:
        say(f"{args.prog}: failed: {e}")
        return 1
    except KeyboardInterrupt:
        say(f"{args.prog}: stopped (Ctrl-C)", logging.WARNING)
        return 130
    except BrokenPipeError:  # (`fds rules check | head`: a traceback, a QA pass)
        with contextlib.suppress(OSError):  # nothing more can be written to it
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 141  # as a shell reports SIGPIPE
    except MemoryError:  # (a simulation of 200M cards under a memory limit: numpy's
        # traceback, a QA pass; what was asked is too large for this process)
        say(
            f"{args.prog}: failed: out of memory: give it less at once (fewer --cards or "
            "--days, a smaller file) or run it where more memory is allowed"
        )
        return 1
    except (OSError, UnicodeError) as e:  # a path the system refuses (/proc/x, a full disk,
        say(f"{args.prog}: failed: {describe(e)}{_full_hint(e)}")  # a name too long): said,
        return 1  # not a traceback (a QA pass)
    finally:
        if argv is None:  # the console script: the process exits next
            # Out of the collector's sight, what the command held is not visited by the
            # interpreter's last full collection (3.8 s at 200,000 cards, growing with the
            # state; after a SIGTERM's drain, against the 10 s promise: bench_exit.py).
            gc.freeze()


def _full_hint(e: BaseException) -> str:
    """What to do about a full or read-only disk: free space on the file's disk when the error
    names one, else on the output's (a write's: `fds demo` and `fds bench` said `[Errno 28] No
    space left on device` alone, a QA pass)."""
    if isinstance(e, OSError) and e.errno in _FULL:  # (with a file: its own disk; fds run
        # and fds models have no output path to give, a QA pass)
        if e.filename:
            return ": free space on its disk (or make it writable), then run it again"
        return ": free space on the output's disk (or give another output path), then run it again"
    return ""


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def write_output(path: Path, data: bytes) -> None:
    """Write a command's output file whole or not at all (a temporary file beside it, then a
    rename): a full disk left `--changed-out` cut mid-record, looking complete (a QA pass).
    A failure is an :class:`FdsError` naming the file and what to do. A name ending in
    ``.gz`` is written gzip-compressed, as `fds replay --out` writes one (it was text under
    that name: a QA pass)."""
    import gzip

    from fds.streams.files import gzipped

    if gzipped(path):
        data = gzip.compress(data)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise FdsError(
            f"cannot write {path}: {describe(e)}; nothing was written to it: free space (or "
            "give another path) and run it again"
        ) from None


def unwritable(path: Path) -> str | None:
    """Why a file cannot be written at ``path`` (its directory is made if missing), or None.
    A link that names no file yet is judged by the path it names (one into a missing folder
    passed, and the command failed once its engine was built, a raw FileNotFoundError: a QA
    pass)."""
    try:
        dangling = path.is_symlink() and not path.exists()
    except OSError:  # (a name too long: said below, a CI run)
        dangling = False
    if dangling:  # (a link to a file, a device or a pipe
        try:  # is judged below as before: /dev/fd/N of a pipe resolves to no path, a review)
            target = path.resolve()
        except (OSError, RuntimeError) as e:  # (a loop of links)
            return f"it is a link that names no file ({e})"
        return None if target == path else unwritable(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return e.strerror or str(e)
    try:
        if path.is_dir():
            return "it is a directory: name a file in it"
        if path.exists():  # (/dev/null, say, in a directory no user may write)
            return None if os.access(path, os.W_OK) else "it is not writable"
    except OSError as e:  # (a name too long: a traceback's "failed:", exit 1, a QA pass)
        return e.strerror or str(e)
    try:  # (the file itself made and removed: access() said yes to root for /proc, where none
        # can be, and a name too long failed after the run, exit 1: a QA pass)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:  # (made meanwhile)
        return None
    except OSError as e:
        return f"no file can be made in its directory ({e.strerror or e})"
    with contextlib.suppress(OSError):
        path.unlink()
    return None


def same_file(a: Path, b: Path) -> bool:
    """Do ``a`` and ``b`` name one file (links and relative paths included; one that does not
    exist yet by its resolved path)? For the outputs a command must not write over its inputs.
    """
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _whole(text: str, least: int, what: str, too_small: str, give: str = "a whole number") -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: give {give}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{too_small}, got {value}")
    if value > _MOST:  # (10**30 cards was a NumPy OverflowError traceback: a QA pass)
        raise argparse.ArgumentTypeError(f"must be at most {_MOST:,}, got {text}")
    return value


#: The largest whole number an option takes (Kafka's sizes and timeouts are 32-bit too).
_MOST = 2**31 - 1


def labels_not_input(labels: str | Path | None, file: str | Path) -> None:
    """Refuse a ``--labels`` file that is the input itself (every transaction was read twice:
    decided, and a label's dead letter; replay and backtest alike)."""
    if labels is not None and same_file(Path(labels), Path(file)):
        raise ConfigError(
            f"--labels {labels} is the input file; give the labels file (tx_id, ts, is_fraud), "
            "or a --mapping with a label column"
        )


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    return _whole(text, 1, "number", "must be at least 1")


def at_least(least: int) -> Callable[[str], int]:
    """argparse type: a whole number >= ``least`` (``--merchants``: the simulator's minimum,
    said by the flag; it was "merchants must be at least 100", a QA pass)."""
    return lambda text: _whole(text, least, "number", f"must be at least {least:,}")


def count_or_all(text: str) -> int | None:
    """argparse type: a whole number >= 0, or ``all`` (``None``)."""
    if text.strip().lower() == "all":
        return None
    # (`abc` was told "give a whole number", without 'all': a README walk)
    return _whole(text, 0, "number", "give a whole number >= 0 or 'all'", "a number or 'all'")


def seed(text: str) -> int:
    """argparse type: a random seed, a whole number >= 0 (NumPy refuses a negative one)."""
    return _whole(text, 0, "seed", "a seed is a whole number >= 0")


#: How ``--drift-day`` says "no drift" (``fds simulate``, ``fds bench precision``).
NO_DRIFT = frozenset({"none", "off", "no", "-1"})


def drift_day(text: str, words: str = "'none' for no drift") -> int | None:
    """argparse type: a day number >= 0, or ``None`` for no drift (``none``, or -1 as the
    benchmark took it: the two commands refused each other's spelling, a QA pass); ``words``:
    what else the option takes, as its errors say."""
    if text.strip().lower() in NO_DRIFT:
        return None
    try:
        return _whole(text, 0, "day", "a day is >= 0")
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e} (or {words})") from None


def folder(text: str) -> Path:
    """argparse type: a folder to write into (made when missing), not an existing file."""
    if not text.strip():  # ('' wrote into the current folder: a QA pass)
        raise argparse.ArgumentTypeError("an empty path: name a folder")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r} is a file, not a folder: name a folder (it is made when missing)"
        )
    return path


def file_path(what: str) -> Callable[[str], Path]:
    """argparse type: the path of a file (``what``: "rules file"); an empty path is refused
    (an unset shell variable read the current folder: a QA pass).

    >>> file_path("rules file")("")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: empty path: give a rules file
    """

    def parse(text: str) -> Path:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"empty path: give a {what}")
        if text == "-":  # (a file named "-" was written: a QA pass)
            raise argparse.ArgumentTypeError(
                f"'-' (standard input or output) is not read or written here: give a {what}"
            )
        return Path(text)

    return parse


#: argparse type of every --registry: a folder path, not empty (an empty one was the working
#: directory, a QA pass).
registry_folder = file_path("model registry folder")


def file_or_none(what: str) -> Callable[[str], Path | None]:
    """argparse type: :func:`file_path`, or ``none`` for none.

    >>> file_or_none("rules file")("none") is None
    True
    """
    path = file_path(f"{what}, or none")
    return lambda text: None if text.lower() == "none" else path(text)


def arg_type(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse type of ``check``, a function that a setting validates with too: its
    ``ValueError`` becomes argparse's usage error, so a flag and a settings file say one
    thing."""

    def parse(text: str) -> Any:
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: give a number") from None
    if not 0 < value < math.inf:  # (inf and nan too: a QA pass)
        raise argparse.ArgumentTypeError(f"must be a finite number greater than 0, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
