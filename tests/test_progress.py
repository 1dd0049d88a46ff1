"""Progress bars: only on a terminal, log lines above them, a streamed file's total."""

import io
import logging
import sys

from fds import replay
from fds.engine import Engine
from fds.logs import configure_logging
from fds.progress import progress_bar
from fds.streams.files import count_rows
from tests.test_replay import T0, ListSink, tx, write_jsonl


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def on_terminal(monkeypatch) -> Terminal:
    tty = Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    configure_logging(stream=tty)
    return tty


def screen_lines(text: str) -> list[str]:
    """What a terminal shows of each line: the text after its last carriage return."""
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n")]


def test_a_log_line_is_printed_above_the_bar_not_into_it(monkeypatch):
    tty = on_terminal(monkeypatch)
    try:
        with progress_bar(10, unit="tx", desc="replay", mininterval=0) as bar:
            bar.update(5)
            logging.getLogger("fds.test").warning("careful")
            bar.update(5)
        warned = [line for line in screen_lines(tty.getvalue()) if "careful" in line]
        assert warned and all(line.startswith("ts=") for line in warned), tty.getvalue()
        assert "replay: 100%" in tty.getvalue()
    finally:
        configure_logging()
    handlers = logging.getLogger("fds").handlers  # the bar's handler is gone with it
    assert not any("Tqdm" in type(h).__name__ for h in handlers), handlers


def test_no_bar_when_stderr_is_no_terminal(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    with progress_bar(10, unit="tx", desc="replay", mininterval=0) as bar:
        bar.update(10)
    assert log.getvalue() == ""


def test_rows_are_counted_for_the_bar(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("tx_id,ts\na,1\nb,2\n\n")  # (a blank line counts: an estimate for the bar)
    assert count_rows(csv) == 3
    assert count_rows(tmp_path / "t.jsonl") is None  # missing
    (tmp_path / "t.csv.gz").write_bytes(b"")
    assert count_rows(tmp_path / "t.csv.gz") is None  # a gzip file is not decompressed twice


def test_a_streamed_replay_shows_its_total(tmp_path, monkeypatch):
    p = write_jsonl(tmp_path / "x.jsonl", [tx(i, T0 + i) for i in range(7)] + [{"tx_id": 1}])
    tty = on_terminal(monkeypatch)
    try:
        s = replay.run(Engine(), replay.open_stream(p), ListSink(), ListSink(), progress=True)
    finally:
        configure_logging()
    assert s.decided == 7
    shown = tty.getvalue()
    assert "replay:   0%|          | 0.00/8.00" in shown, (
        shown
    )  # the file's 8 records, counted first
    assert screen_lines(shown)[-2].startswith("replay: 100%|"), shown  # 7 of 7 decided


class FakeBar:
    """tqdm's interface as the replay uses it."""

    def __init__(self, total):
        self.total, self.n, self.disable = total, 0, False

    def update(self, k):
        self.n += k

    def refresh(self):
        pass


def test_the_bar_counts_dead_letters_and_is_current_before_a_long_wait(tmp_path, monkeypatch):
    """A QA pass: rows that were dead letters never moved the bar (45% when the file was
    nearly read, then a total quietly replaced), and before a paced wait of minutes the bar
    stood at what it showed a second earlier."""
    import contextlib

    bars: list[FakeBar] = []

    @contextlib.contextmanager
    def fake(total, **kw):
        bars.append(FakeBar(total() if callable(total) else total))
        yield bars[-1]

    monkeypatch.setattr(replay, "progress_bar", fake)
    rows = [tx(i, T0 + i / 10) for i in range(3)] + [{"tx_id": "bad"}] + [tx(9, T0 + 600)]
    p = write_jsonl(tmp_path / "x.jsonl", rows)
    seen_at_wait: list[int] = []

    def sleep(s):
        if s > 1.0:
            seen_at_wait.append(bars[-1].n)

    now = iter(range(10**6))
    clock = lambda: next(now) * 1e-3  # noqa: E731
    s = replay.run(Engine(), replay.open_stream(p), ListSink(), ListSink(), progress=True,
                   speed=1.0, sleep=sleep, clock=clock, source=str(p))  # fmt: skip
    assert s.decided == 4 and s.transactions == 5
    assert seen_at_wait == [4]  # three decided and the dead letter, before the 10-minute wait
    assert bars[-1].n == bars[-1].total == 5


def test_without_a_terminal_long_work_logs_how_far_it_got(monkeypatch, caplog):
    """A README walk: `fds bench precision` into a file said nothing for 8 minutes. Without a
    terminal there is no bar, and a line every LOG_EVERY_S says how far it got."""
    import fds.progress

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # no terminal
    monkeypatch.setattr(fds.progress, "LOG_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="fds.progress"):
        with progress_bar(10, unit="tx", desc="replay", enabled=True) as bar:
            bar.update(4)
            bar.update(6 - bar.n)
        with progress_bar(10, unit="tx", desc="quiet", enabled=False) as bar:
            bar.update(3)  # (--no-progress: nothing at all)
    said = [r.getMessage() for r in caplog.records]
    assert said == ['progress task="replay" done="4" unit="tx"',
                    'progress task="replay" done="6" unit="tx"']  # fmt: skip
