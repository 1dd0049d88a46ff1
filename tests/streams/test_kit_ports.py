"""Which controller port ``fds kafka up`` gives a broker when none is asked for. A second
broker on ``--port 29492`` took the default 19093 too, and whichever of the two started last
died binding it (a Java stack trace in its log: found when a QA broker ran beside the suite's)."""

import json
import re
import socket
import time
from pathlib import Path

import pytest

from fds.errors import ConfigError, FdsError
from fds.streams import kafka_kit


@pytest.fixture
def started(monkeypatch):
    """The ports ``up`` would start a broker with (nothing is started)."""
    seen: list[tuple[int, int, int | None]] = []

    def up(ddir, port, cport, timeout, sport):
        seen.append((port, cport, sport))

    monkeypatch.setattr(kafka_kit, "_up", up)
    return seen


def test_the_controller_port_follows_the_client_port(tmp_path, started):
    kafka_kit.up(port=29492, data_dir=tmp_path / "a")
    kafka_kit.up(port=29492, data_dir=tmp_path / "b", secure_port=29493)
    kafka_kit.up(port=65535, data_dir=tmp_path / "c")
    kafka_kit.up(data_dir=tmp_path / "d")  # the default pair stays 19092/19093
    assert started == [
        (29492, 29493, None), (29492, 29494, 29493), (65535, 65534, None), (19092, 19093, None)
    ]  # fmt: skip


def test_a_data_dir_keeps_the_controller_port_it_was_formatted_with(tmp_path, started):
    """(a data dir formatted by an older kit for 29492/19093 starts as it was formatted)"""
    (tmp_path / "kit.json").write_text(json.dumps({"port": 29492, "controller_port": 19093}))
    kafka_kit.up(port=29492, data_dir=tmp_path)
    assert started == [(29492, 19093, None)]
    # and its client port, when none is given (19092 was taken and refused, naming both:
    # `fds kafka up --data-dir D` after a crash, a QA pass)
    kafka_kit.up(data_dir=tmp_path)
    assert started[-1] == (29492, 19093, None)
    kafka_kit.up(data_dir=tmp_path / "new")
    assert started[-1] == (kafka_kit.DEFAULT_PORT, kafka_kit.DEFAULT_PORT + 1, None)


@pytest.mark.parametrize(
    "body, said",
    [
        ("topics: {t: {name: x, partitions: abc}}", ":1: topics.t.partitions: Input should be"),
        ("topics: {t: {name: x, partitions: 2.5}}", ":1: topics.t.partitions: Input should be"),
        ("topics: {t: {name: x, partitions: true}}", ":1: topics.t.partitions: Input should be"),
        ("topics: {t: {partitions: 0}}", "greater than or equal to 1"),
        ("replication_factor: abc\ntopics: {t: {partitions: 1}}", ":1: replication_factor:"),
        ("topics:\n  t:\n    partitons: 3\n", "topics.t.partitions: Field required"),
        (
            "a: &a [x, x]\nb: &b [*a, *a]\n"
            + "".join(
                f"{c}: &{c} [{', '.join([f'*{b}'] * 10)}]\n"
                for b, c in zip("bcdef", "cdefg", strict=True)
            ),
            "its aliases (*name) expand to more than",
        ),
    ],
)
def test_a_bad_topic_specs_file_is_said_at_its_line(tmp_path, body, said):
    """A QA pass: `partitions: abc` was a traceback, `2.5` made 2 partitions, `true` one, an
    alias bomb ran out of memory, and nothing named a line: it is read as every YAML file.
    (`"6"` and a key fds does not read, a description, are taken as before: a review.)"""
    p = tmp_path / "tp.yaml"
    p.write_text(body)
    with pytest.raises(ConfigError, match=re.escape(said)):
        kafka_kit.load_topic_specs(p)


def test_a_controller_port_in_use_is_refused_before_the_broker_starts(tmp_path):
    with socket.socket() as taken, socket.socket() as free:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free.bind(("127.0.0.1", 0))  # (bound, not listening: no one answers there)
        port = free.getsockname()[1]
        free.close()
        with pytest.raises(ConfigError, match=r"the controller port \d+ is already in use"):
            kafka_kit.up(port=port, controller_port=taken.getsockname()[1], data_dir=tmp_path)
    assert not (tmp_path / "kraft").exists()  # nothing formatted


def test_a_port_in_use_leaves_no_data_dir_made_for_it(tmp_path, capsys):
    """A QA pass: the refusal left the --data-dir it had made, empty; one that was there
    stays. Through `fds kafka up` too (it made the folder before the kit: a later QA pass)."""
    from fds.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for ddir in (tmp_path / "new", tmp_path):
            with pytest.raises(ConfigError, match=rf"port {port} is already in use, not by"):
                kafka_kit.up(port=port, controller_port=port + 1, data_dir=ddir)
        cli = ["kafka", "up", "--port", str(port), "--data-dir", str(tmp_path / "cli")]
        assert main(cli) == 2
    assert f"port {port} is already in use" in capsys.readouterr().err
    assert not (tmp_path / "new").exists() and tmp_path.is_dir()
    assert not (tmp_path / "cli").exists()


def test_the_scram_password_is_not_on_the_formatting_command_line(tmp_path, monkeypatch):
    """A security review: `fds kafka up --secure-port` gave the SCRAM user's password to the
    storage tool on its command line, which any local user could read in `ps`. It goes in an
    owner-only argument file the java launcher reads, removed after."""
    import subprocess
    from pathlib import Path

    seen = []

    def run(cmd, **_):
        argfile = Path(cmd[1][1:])
        seen.append((cmd, argfile.read_text(), oct(argfile.stat().st_mode & 0o777)))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(kafka_kit.subprocess, "run", run)
    secure = kafka_kit.Secure(29094, "s3cret-pw", "store", tmp_path / "k.p12", tmp_path / "ca")
    kafka_kit._format("java", tmp_path, tmp_path / "p", tmp_path / "broker.log", secure)
    ((cmd, text, mode),) = seen
    assert cmd[0] == "java" and len(cmd) == 2 and cmd[1].startswith("@")
    assert "s3cret-pw" not in " ".join(cmd) and mode == "0o600"
    assert '"SCRAM-SHA-512=[name=fds,password=s3cret-pw]"' in text.splitlines()
    assert '"kafka.tools.StorageTool"' in text.splitlines()
    assert not Path(cmd[1][1:]).exists()


@pytest.mark.parametrize("raw", ["0", "-1", "x", "1e9", "0.0001", "inf", "nan"])
def test_a_log_size_that_is_none_is_a_clear_error(monkeypatch, tmp_path, raw):
    monkeypatch.setenv("FDS_KAFKA_LOG_MB", raw)
    with pytest.raises(ConfigError, match=f"FDS_KAFKA_LOG_MB='{raw}' is not a size in MB"):
        kafka_kit._log_properties(tmp_path / "broker.log")


def test_the_log_properties_name_the_absolute_log_file_and_its_size(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FDS_KAFKA_LOG_MB", "0.5")
    flags = kafka_kit._log_properties(Path("rel") / "broker.log")
    assert f"-Dfds.kit.log={tmp_path}/rel/broker.log" in flags
    assert "-Dfds.kit.log.size=524288" in flags


def test_a_start_error_shows_the_tail_of_the_log_and_of_the_jvm_s_own_output(tmp_path):
    """The JVM's own output (broker.out) has its own tail: 25 lines of it hid broker.log's
    error; it is kept across starts, and an older start's stood for a new crash's cause (a
    review): what follows the last start is read."""
    (tmp_path / "broker.log").write_text("".join(f"info {i}\n" for i in range(40)) + "ERROR x\n")
    (tmp_path / "broker.out").write_text(
        f"Exception: an older start's\n{kafka_kit.OUT_START} at 2026-12-04 ---\n"
        + "".join(f"jvm {i}\n" for i in range(40))
    )
    tail = kafka_kit._log_tail(tmp_path / "broker.log", n=5).splitlines()
    assert tail == ["info 36", "info 37", "info 38", "info 39", "ERROR x",
                    "jvm 35", "jvm 36", "jvm 37", "jvm 38", "jvm 39"]  # fmt: skip
    assert not any("older" in ln for ln in kafka_kit._log_lines(tmp_path / "broker.log"))
    assert kafka_kit._log_tail(tmp_path / "none" / "broker.log") == "(no log yet)"


def test_every_fds_variable_the_code_reads_is_one_fds_knows():
    """FDS_KAFKA_LOG_MB, read by the kit, was said to be "no variable fds reads" by every
    `fds run` (a review): each ``FDS_*`` name the package reads is known."""
    import re

    from fds.streams.settings import unknown_env

    root = Path(kafka_kit.__file__).parents[1]
    benchmarks = root.parent / "benchmarks"  # (every command warns: their variables too)
    read = {
        name
        for path in [*root.rglob("*.py"), *benchmarks.glob("*.py")]
        for name in re.findall(r'env(?:iron)?(?:\.get\(|\[)\s*"(FDS_[A-Z0-9_]+)"', path.read_text())
    }
    assert {
        "FDS_KAFKA_LOG_MB",
        "FDS_FEATURE_KERNEL",
        "FDS_KERNEL_CACHE",
        "FDS_KEEP_SCRATCH",
    } <= read
    assert unknown_env(dict.fromkeys(read, "x")) == []


def test_a_topic_specs_file_of_before_is_taken(tmp_path, caplog):
    """A review: a partition count written as text, or a key of its own (a description),
    worked before the file was checked: taken, the key said and left out."""
    p = tmp_path / "tp.yaml"
    p.write_text('topics:\n  t:\n    partitions: "6"\n    description: ours\n')
    with caplog.at_level("WARNING", logger="fds.streams.kafka_kit"):
        assert kafka_kit.load_topic_specs(p)["t"]["partitions"] == 6
    assert "keys fds does not read, left out: topics.t.description" in caplog.text


def test_up_on_another_port_says_how_fds_s_commands_reach_it(tmp_path, monkeypatch, capsys):
    """A README walk on a shared machine: after `fds kafka up --port 29192`, the README's next
    commands (no --bootstrap) went to whatever broker answered on 19092, with no error."""
    from fds.cli import main

    monkeypatch.setattr(kafka_kit, "up", lambda port=None, *a, **kw: f"127.0.0.1:{port or 19092}")
    monkeypatch.delenv("FDS_BOOTSTRAP", raising=False)
    ddir = tmp_path / "k"
    assert main(["kafka", "up", "--port", "29192", "--data-dir", str(ddir), "--no-topics"]) == 0
    out, err = capsys.readouterr()
    assert out == "127.0.0.1:29192\n"  # (scripts read it)
    assert "--bootstrap 127.0.0.1:29192" in err and "FDS_BOOTSTRAP=127.0.0.1:29192" in err
    assert f"--data-dir {ddir}" in err
    monkeypatch.setenv("FDS_BOOTSTRAP", "127.0.0.1:29192")  # told already: nothing to say
    assert main(["kafka", "up", "--port", "29192", "--no-topics"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("FDS_BOOTSTRAP")
    assert main(["kafka", "up", "--no-topics"]) == 0  # the default port: nothing to say
    assert capsys.readouterr().err == ""


def test_a_data_dir_that_cannot_be_one_is_a_usage_error(tmp_path, capsys):
    """A QA pass: a file on the way to --data-dir was a raw NotADirectoryError from `fds kafka
    status` and `down`, a folder that cannot be made a FileNotFoundError from `up` (`failed:`,
    exit 1); a data dir no broker ever used was told only "not running"."""
    from fds.cli import main

    (tmp_path / "f.jsonl").write_text("{}\n")
    for command in ("status", "down"):
        with pytest.raises(SystemExit) as e:
            main(["kafka", command, "--data-dir", str(tmp_path / "f.jsonl" / "sub")])
        assert e.value.code == 2
        assert "f.jsonl is a file, not a folder: give a folder" in capsys.readouterr().err
    assert main(["kafka", "up", "--port", "29496", "--data-dir", "/proc/x"]) == 2
    err = capsys.readouterr().err
    assert "cannot make the data dir /proc/x: No such file or directory; give a folder" in err
    assert main(["kafka", "down", "--data-dir", str(tmp_path / "typo")]) == 0
    assert "not running: no broker was ever started with the data dir" in capsys.readouterr().out
    assert not (tmp_path / "typo").exists()


def test_a_wipe_deletes_only_a_data_dir_of_the_kit_s(tmp_path, capsys, caplog):
    """A QA pass: `fds kafka down --wipe --data-dir D` deleted any folder (a user's sources,
    said "no broker was ever started" and exit 0), and `up` wrote a broker's files into a
    folder holding others, which a wipe then deleted with them."""
    from fds.cli import main

    mine = tmp_path / "src"
    mine.mkdir()
    (mine / "main.c").write_text("code\n")
    assert main(["kafka", "down", "--wipe", "--data-dir", str(mine)]) == 2
    assert "holds files the kit did not write (main.c)" in capsys.readouterr().err
    assert (mine / "main.c").read_text() == "code\n"
    assert main(["kafka", "up", "--port", "29497", "--data-dir", str(mine)]) == 2
    assert "holds files that are not the kit's (main.c)" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["main.c"]
    # a data dir of the kit's (a crashed broker's, rolled logs, a write's temporary file, a
    # mounted volume's lost+found) is wiped: every file of the kit's, the folder once empty
    kit = tmp_path / "kit"
    names = ("kit.json", "broker.log", "broker.log.1", "broker.out", ".kit.json.x1", "broker.pid",
             "server.properties", "kraft/meta.properties", "tls/ca.pem",
             "hs_err_pid7.log")  # fmt: skip
    for name in names:
        (kit / name).parent.mkdir(parents=True, exist_ok=True)
        (kit / name).write_text("{}" if name == "kit.json" else "999999999\n")
    assert main(["kafka", "down", "--wipe", "--data-dir", str(kit)]) == 0
    assert capsys.readouterr().out == f"not running; its data dir {kit} wiped\n"
    assert not kit.exists()
    (kit / "lost+found").mkdir(parents=True)
    (kit / "kit.json").write_text("{}")
    assert main(["kafka", "down", "--wipe", "--data-dir", str(kit)]) == 0
    assert [p.name for p in kit.iterdir()] == ["lost+found"]
    # what else a broker's dir may hold (a core dump; a format killed midway left its
    # arguments) is no reason to refuse it: the kit's files go, the others stay, said (a review)
    for name in (".format-args.x1", "core"):
        (kit / name).write_text("x")
    (kit / "kit.json").write_text('{"port": 29498, "controller_port": 29499}')
    assert main(["kafka", "up", "--port", "29497", "--data-dir", str(kit)]) == 2  # (its ports)
    assert "formatted for ports 29498/29499, not ports 29497/" in capsys.readouterr().err
    kafka_kit.log.addHandler(caplog.handler)  # (the CLI's own handler stops propagation)
    try:
        assert main(["kafka", "down", "--wipe", "--data-dir", str(kit)]) == 0
    finally:
        kafka_kit.log.removeHandler(caplog.handler)
    assert sorted(p.name for p in kit.iterdir()) == ["core", "lost+found"]
    assert f"left in the data dir {kit} (not the kit's): core" in caplog.text
    # a folder of Apache Kafka's own configs (kraft/, server.properties beside others) is no
    # data dir of the kit's: a wipe took it for one, and deleted the user's (a review)
    conf = tmp_path / "config"
    for name in ("kraft/server.properties", "server.properties", "log4j.properties"):
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text("x")
    assert main(["kafka", "down", "--wipe", "--data-dir", str(conf)]) == 2
    assert "holds files the kit did not write (log4j.properties)" in capsys.readouterr().err
    assert (conf / "kraft" / "server.properties").exists() and (conf / "server.properties").exists()


def test_a_data_dir_is_the_same_through_a_link_or_dots_and_not_one_it_begins(tmp_path, monkeypatch):
    """A QA pass: `up` resolved its data dir, `down`/`status` did not, and the broker's
    command line was searched for the path as text: through a symlink or `..` a running broker
    was "stopped" (its pid file deleted, the JVM left running), and `down` of a copy whose path
    began the original's (`/tmp/d` of `/tmp/d1`) stopped the original's broker. A relative
    FDS_KAFKA_DIR started a broker that found no config."""
    import subprocess
    import sys

    real = tmp_path / "data1"
    real.mkdir()
    copy = tmp_path / "data"
    copy.mkdir()
    (tmp_path / "link").symlink_to(real)
    # (a stand-in with a broker's command line: kafka.Kafka CONFIG)
    cmd = [sys.executable, "-c", "import time; time.sleep(60)", "kafka.Kafka"]
    jvm = subprocess.Popen([*cmd, str(real / "server.properties")])
    # one an older release started in a dir it named through a link: the link in its command
    # line, the dir its working directory (a review)
    old = subprocess.Popen([*cmd, str(tmp_path / "link" / "server.properties")], cwd=real)
    try:
        for proc in (jvm, old):  # (right after the fork, its command line is still pytest's)
            deadline = time.monotonic() + 30
            while b"kafka.Kafka" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
                assert time.monotonic() < deadline, "the stand-in did not start"
                time.sleep(0.01)
        (real / "broker.pid").write_text(f"{old.pid}\n")
        assert kafka_kit.status(real).pid == old.pid
        assert kafka_kit.status(copy).pid is None
        for ddir in (real, copy):
            (ddir / "broker.pid").write_text(f"{jvm.pid}\n")
            (ddir / "kit.json").write_text('{"port": 29498, "controller_port": 29499}')
        for named in (real, tmp_path / "link", tmp_path / "link" / ".." / "data1"):
            assert kafka_kit.status(named).pid == jvm.pid
        assert kafka_kit.status(copy).pid is None
        assert kafka_kit.down(copy) is False and jvm.poll() is None
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("FDS_KAFKA_DIR", "link")
        assert kafka_kit.data_dir_default() == real
        assert kafka_kit.status().pid == jvm.pid
    finally:
        for proc in (jvm, old):
            proc.kill()
            proc.wait()


def test_a_damaged_kit_record_is_said_with_its_file(tmp_path):
    (tmp_path / "kit.json").write_text('{"port": 1,')
    with pytest.raises(ConfigError) as e:
        kafka_kit.status(tmp_path)
    assert f"{tmp_path / 'kit.json'} is damaged (" in str(e.value)
    assert "fds kafka down --wipe --data-dir" in str(e.value)


def test_a_broker_that_died_on_a_port_in_use_says_so(tmp_path):
    """A QA pass: two `fds kafka up` at once on one port (other data dirs): the one that lost
    the port ended in a Java stack trace alone."""
    log_file = tmp_path / "broker.log"
    log_file.write_text("ERROR [KafkaServer id=1] Fatal error\n"
                        "org.apache.kafka.common.KafkaException: Socket server failed to bind to "
                        "127.0.0.1:29495: Address already in use.\n")  # fmt: skip
    said = r"^the Kafka broker exited \(a port of it in use: another broker started meanwhile"
    with pytest.raises(FdsError, match=said + r" on 127.0.0.1:29495\?\); see "):
        kafka_kit._wait_ready("127.0.0.1:29495", lambda: False, log_file, 5.0)
    log_file.write_text("ERROR something else\n")
    with pytest.raises(FdsError, match=r"^the Kafka broker exited; see "):
        kafka_kit._wait_ready("127.0.0.1:29495", lambda: False, log_file, 5.0)
