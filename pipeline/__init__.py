"""dwscan's library: one module per stage, plain functions over Arrow tables and paths."""
