"""The sample stream and mapping shipped in streams/ work end to end through the CLI."""

import gzip
from pathlib import Path

import orjson

from fds.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_handbook_sample_replays_with_its_mapping(tmp_path, capsys):
    out = tmp_path / "d.jsonl"
    code = main(
        [
            "replay",
            str(ROOT / "streams/samples/handbook.csv.gz"),
            "--mapping",
            str(ROOT / "streams/mappings/handbook.yaml"),
            "--model",
            "none",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    with gzip.open(ROOT / "streams/samples/handbook.csv.gz", "rt") as f:
        rows = sum(1 for _ in f) - 1
    decisions = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(decisions) == rows
    assert decisions[0]["features"]["card_count_1h"] == 1
    assert not (tmp_path / "d.dlq.jsonl").exists()
    captured = capsys.readouterr()
    err = captured.out + captured.err  # (the summary table on stdout)
    assert "known frauds" in err
