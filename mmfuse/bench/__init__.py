"""Benchmarks people run: the main job's leaderboard (``mmfuse run``)."""
