"""``python -m musicrec``: the same as the installed ``musicrec`` command."""
import sys

from musicrec.cli import main

sys.exit(main())
