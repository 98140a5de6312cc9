"""musicrec: low-latency music recommendations (offline indexer, index, service, web)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("musicrec")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"
