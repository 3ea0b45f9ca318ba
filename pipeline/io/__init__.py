"""Doors to the outside, one module each: the Hub, checkpoint formats, output storage, the run lock,
timm's accuracy tables, DuckDB queries, the FAISS template index, and the records two stages
share (kernel loading, the template set, the model catalogue)."""
