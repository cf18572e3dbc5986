"""Build hooks: the wheel and the sdist must carry the web app's vendored front-end files.

fieldhub/web/static/vendor is filled from npm by scripts/setup (it is not in git, so the
package-lock stays the one record of which uPlot and Swagger UI we ship). A build without it
would give a web app whose charts and API docs fail in the browser only, so building refuses
instead. Metadata is in setup.cfg.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

VENDOR_DIR = Path(__file__).resolve().parent / "fieldhub" / "web" / "static" / "vendor"
VENDOR_FILES = (
    "uPlot.iife.min.js",
    "uPlot.min.css",
    "uPlot.LICENSE",
    "swagger-ui-bundle.js",
    "swagger-ui.css",
    "swagger-ui.LICENSE",
)


def check_vendor() -> None:
    missing = [name for name in VENDOR_FILES if not (VENDOR_DIR / name).is_file()]
    if missing:
        raise SystemExit(
            f"error: {VENDOR_DIR} lacks {', '.join(missing)}: run scripts/setup (it copies "
            "them from npm) before building; a wheel without them would serve pages whose "
            "charts or API docs cannot load"
        )


class BuildPyWithVendor(build_py):
    def run(self) -> None:
        check_vendor()
        super().run()


class SdistWithVendor(sdist):
    def run(self) -> None:
        check_vendor()
        super().run()


setup(cmdclass={"build_py": BuildPyWithVendor, "sdist": SdistWithVendor})
