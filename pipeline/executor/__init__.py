"""Scheduling on Ray (tasks, Ray Train, cluster checks) and progress lines. It knows no stage: the
stages hand it functions to run."""
