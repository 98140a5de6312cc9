"""``musicrec``: the one command line, ``musicrec serve | build | consume | eval | rebuild``.

Each sub-command lives with its side: ``serve`` in musicrec/service/serve.py, the offline ones
in musicrec/indexer/cli.py; this module only puts them under one name (installed by
``[project.scripts]``; ``python -m musicrec`` is the same).
"""
from __future__ import annotations

import argparse

from musicrec import __version__
from musicrec.indexer import cli as indexer_cli
from musicrec.service import serve


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="musicrec", description="Low-latency music recommendations from audio features.",
        epilog="`musicrec <command> --help` shows a command's options, their defaults and the environment "
               "variables it reads.")
    p.add_argument("--version", action="version", version=f"musicrec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{serve,build,consume,eval,rebuild}")
    serve.add_parser(sub).set_defaults(func=None)
    indexer_cli.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "serve":
        return serve.cmd_serve(args)
    return indexer_cli.run(args)
