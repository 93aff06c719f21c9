"""Prometheus exporter for Gcore Cloud virtual GPU images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gcore-gpu-image-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
