"""What analysts read: per-model tables, statistics, plots and the static report page."""
