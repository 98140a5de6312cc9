import sys

from musicrec.indexer.cli import main

sys.exit(main())
