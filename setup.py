"""Build hook: the shipped study files travel inside the wheel.

`studies/*.yaml` at the top of the checkout stay their source; building copies them into the package as
`ablate/_studies/`, where `ablate.study.load_study` finds them by name when no `studies/` folder of the
current directory or of a checkout has the name. Everything else is configured in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class build_py_with_studies(build_py):  # noqa: N801 - setuptools' command naming
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout's studies/
            return
        dest = Path(self.build_lib) / "ablate" / "_studies"
        dest.mkdir(parents=True, exist_ok=True)
        for src in sorted((ROOT / "studies").glob("*.yaml")):
            self.copy_file(str(src), str(dest / src.name))


setup(cmdclass={"build_py": build_py_with_studies})
