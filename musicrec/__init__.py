"""musicrec: low-latency music recommendations (offline indexer, index, service, web)."""
