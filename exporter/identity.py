"""Who is running: version, source revision, build date and Python, as `--version` and the landing
page show them (after Go's `version.Print`) and `gcore_exporter_build_info` exports them."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from exporter import __version__

# The image sets these from its REVISION and BUILD_DATE build arguments (see the Dockerfile).
REVISION_ENV = "GCORE_EXPORTER_REVISION"
BUILD_DATE_ENV = "GCORE_EXPORTER_BUILD_DATE"
PROGRAM = "gcore-gpu-image-exporter"
DOCS_URL = "https://github.com/gcore-gpu-image-exporter/gcore-gpu-image-exporter/tree/main/docs"


def revision() -> str:
    return os.environ.get(REVISION_ENV, "").strip() or "unknown"


@dataclass(frozen=True, slots=True)
class Identity:
    version: str
    revision: str
    build_date: str
    python_version: str
    platform: str

    @classmethod
    def current(cls) -> Identity:
        return cls(
            version=__version__,
            revision=revision(),
            build_date=os.environ.get(BUILD_DATE_ENV, "").strip() or "unknown",
            python_version=platform.python_version(),
            platform=f"{platform.system().lower()}/{platform.machine()}",
        )

    def details(self) -> dict[str, str]:
        """The lines under the first of `--version`, as label and value."""
        return {
            "build date": self.build_date,
            "python version": self.python_version,
            "platform": self.platform,
        }

    def print_text(self) -> str:
        """What `--version` prints."""
        head = f"{PROGRAM}, version {self.version} (revision: {self.revision})"
        return "\n".join([head, *(f"  {k + ':':<17} {v}" for k, v in self.details().items())])
