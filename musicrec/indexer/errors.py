"""The indexer's domain errors, in a module that imports nothing heavy.

Why apart from ``musicrec.indexer.train``: the CLI maps these to exit codes for every command, and
``indexer consume`` should not pay torch's import (~2.4 s here) to do so.
"""
from __future__ import annotations


class ModelFitError(RuntimeError):
    """Training diverged (NaN/inf loss) or had too little data to learn from."""
