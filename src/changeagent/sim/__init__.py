"""changeagent.sim: a seeded, single-threaded cluster simulator for the Raft core.

How it works. One `random.Random(seed)` drives everything, and one thread runs
one event at a time from a time-ordered queue (`scheduler.Scheduler`; ties
break by insertion order), so a seed is one exact run and a failing seed
replays exactly (`python -m changeagent.sim --replay SEED`). No wall clock, no
threads, and no iteration over sets or dicts whose order could vary.

Each simulated server (`cluster.SimNode`) owns a `log.SimLog`: an in-memory disk
with a durable part and a staged, unsynced part. The Ready loop follows the
core's contract literally: take a Ready, send `messages` at once, *write* the
hard state, snapshot and entries (staged), and schedule the *fsync* to complete
later; only when it completes are `messages_after_persist` sent, the committed
entries applied and `advance()` called. A crash drops the staged write and the
core object; a restart rebuilds `RaftNode` from the durable log and hard state.

The network (`network.Network`) drops, delays, duplicates and reorders messages
and cuts links for symmetric and asymmetric partitions. A chaos driver
(`chaos.ChaosDriver`) draws a fault profile per seed and then random actions:
client proposals and ReadIndex requests, crashes and restarts, partitions and
heals, membership changes (add learner, promote, remove, including the leader),
leadership transfers, compactions and forced campaigns.

After every event the checkers (`checkers`) verify election safety, log
matching, leader completeness, state machine safety, commit monotonicity, that
no applied entry is ever lost, and that no ReadIndex answer is stale. After the
fault phase comes a liveness phase: faults stop, partitions heal, crashed nodes
restart, and within a bounded number of ticks a leader must be elected, every
client proposal applied and every member caught up.

`bugs` plants deliberate bugs (without touching the core's files) to show the
checkers fail when they should; `runner` runs many seeds, in one process or
several. See DESIGN.md in this directory for the decisions and trade-offs.
"""
