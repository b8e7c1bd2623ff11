"""aarmc: a policy language for AI-agent tool calls, its checker, compiler and CLI."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("aarmc")
except _metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
