"""changeagent's benchmark suite: changeagent side by side with etcd and Redis.

Run `python -m bench --quick` (under a minute) or `python -m bench` (full run);
see docs/BENCHMARKS.md.
"""
