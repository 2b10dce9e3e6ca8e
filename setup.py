"""Packaging hook: the wheel carries the built-in configs.

`conf/` stays at the top of the repository (it is the source, and `python train.py` reads it from
a checkout); building copies it to `foldvision/conf/` inside the package, where an installed wheel
finds it from any working folder (foldvision.config.conf_dir). Everything else is in setup.cfg.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithConf(build_py):
    """build_py that also copies conf/**.yaml into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's conf/ directly
            return
        target = Path(self.build_lib) / "foldvision" / "conf"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(ROOT / "conf", target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        conf = Path(self.build_lib) / "foldvision" / "conf"
        extra = [str(conf / p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*") if p.is_file()]
        return [*super().get_outputs(include_bytecode), *([] if self.editable_mode else extra)]


setup(cmdclass={"build_py": BuildPyWithConf})
