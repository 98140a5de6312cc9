"""``python -m musicrec.data PATH``: load a track CSV and print what cleaning did, as JSON.

For checking a dataset before building an index from it; exits 2 with the one-line DataError.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from musicrec.data.loader import load_csv
from musicrec.data.schema import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m musicrec.data", description="Load a track CSV and report on it.")
    parser.add_argument("path", help="CSV or CSV.gz in one of the accepted spellings")
    args = parser.parse_args(argv)
    try:
        catalog = load_csv(args.path)
    except DataError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    sys.stdout.write(json.dumps(dataclasses.asdict(catalog.report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
