"""A built wheel is a working fds outside the checkout: its default rules, model specs, topic
specs and broker kit travel inside it (``fds/_shipped``, put there by setup.py) and
:mod:`fds.shipped` finds them. Before, only the code was packaged: an installed fds said
"rules/default.yaml: cannot read the rules file" for its own default (a QA pass)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_wheel_carries_and_finds_what_fds_ships(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: no build left over in the checkout's build/ counts
    skip = shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "lib", "target",
                                  "registry", "benchmarks", "demo-out", "data")  # fmt: skip
    shutil.copytree(REPO, src, ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(src)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("fds-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    script = (
        "import fds, fds.shipped as s, fds.pipeline as p, fds.models.spec as m, "
        "fds.streams.kafka_kit as k\n"
        "print(fds.__file__, s.ROOT, p.DEFAULT_RULES, m.resolve_spec_path('tree'), k.KIT_DIR,"
        " k.load_topic_specs()['transactions']['key'], sep='\\n')"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=tmp_path,
        env=env,
    ).stdout.split("\n")  # fmt: skip
    shipped = site / "fds" / "_shipped"
    assert out[:6] == [
        str(site / "fds" / "__init__.py"), str(shipped), str(shipped / "rules" / "default.yaml"),
        str(shipped / "models" / "tree.yaml"), str(shipped / "streams" / "kafka"), "card_id",
    ]  # fmt: skip
    assert (shipped / "streams" / "kafka" / "pom.xml").is_file()
    check = subprocess.run(
        [sys.executable, "-m", "fds", "rules", "check"], capture_output=True, text=True,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert check.returncode == 0 and f"OK   {shipped / 'rules' / 'default.yaml'}" in check.stdout
