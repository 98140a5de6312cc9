"""Track data: track sources (the CSV loader, Spotify playlists, the synthetic demo catalogue) and their schema.

Import the modules themselves (``musicrec.data.loader``, ``musicrec.data.schema``, ...): the package
re-exports nothing, so ``import musicrec.data.schema`` on the serving path never pulls in pandas.
"""
