"""dwscan: the recurring patterns in trained depthwise kernels, zoo by zoo.

Sub-packages by role, in data order: `stages` (extract, train, templates, assign, report),
`method` (the paper's numerics), `io` (every door to files, the Hub, FAISS and DuckDB),
`executor` (Ray), `reports` (tables, statistics, plots, the page), `cli`, `testing`.
`run` and `rescan` put the stages in order.
"""
