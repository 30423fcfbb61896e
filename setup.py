"""The wheel carries compiled catalogs: `build_py` compiles `bot/locales/*/LC_MESSAGES/*.po`
to `.mo` next to the copied sources (pyproject.toml holds everything else).

The `.mo` files are build output and not in git; `make catalogs` builds them in a checkout.
A catalog with a broken placeholder stops the build here too (see bot/catalogs.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class build_py_with_catalogs(build_py):
    def run(self) -> None:
        super().run()
        sys.path.insert(0, str(HERE))
        from bot.catalogs import LOCALES_DIR, compile_all

        problems = compile_all(LOCALES_DIR, into=Path(self.build_lib) / "bot" / "locales")
        if problems:
            raise SystemExit("broken translations:\n" + "\n".join(map(str, problems)))


setup(cmdclass={"build_py": build_py_with_catalogs})
