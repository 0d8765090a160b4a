"""Output storage: A1111 `parameters` PNG metadata, atomic writes, the SQLite index."""
