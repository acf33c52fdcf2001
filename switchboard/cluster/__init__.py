"""Runtimes: `local` (everything in this process, the default) and `ray` (a cluster)."""
