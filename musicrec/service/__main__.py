"""``python -m musicrec.service``: the same as ``musicrec serve`` (musicrec/service/serve.py)."""
import sys

from musicrec.service.serve import main

sys.exit(main())
