"""Build hook (the rest of the package is declared in pyproject.toml): a built wheel carries
the files fds ships beside its code -- default rules, model specs, topic specs, the local
broker kit, column mappings and samples -- in ``fds/_shipped``, where :mod:`fds.shipped`
finds them when no checkout surrounds the package."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = (
    "rules/*.yaml", "rules/*.json", "models/*.yaml", "streams/topics.yaml",
    "streams/kafka/pom.xml", "streams/kafka/*.properties", "streams/kafka/*.template",
    "streams/kafka/install.sh", "streams/mappings/*.yaml", "streams/samples/*",
)  # fmt: skip


class BuildPyWithShipped(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout
            return
        here = Path(__file__).resolve().parent
        shipped = Path(self.build_lib) / "fds" / "_shipped"
        shutil.rmtree(shipped, ignore_errors=True)  # (a file removed since a build: not kept)
        for pattern in SHIPPED:
            for src in sorted(here.glob(pattern)):
                dest = shipped / src.relative_to(here)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)


setup(cmdclass={"build_py": BuildPyWithShipped})
