"""changeagent.sim: a seeded, single-threaded cluster simulator for the Raft core
and the node's runtime.

How it works. One `random.Random(seed)` drives everything, and one thread runs
one event at a time from a time-ordered queue (`scheduler.Scheduler`; ties
break by insertion order), so a seed is one exact run and a failing seed
replays exactly (`python -m changeagent.sim --replay SEED`). No wall clock, no
threads, and no iteration over sets or dicts whose order could vary.

Each simulated server (`host.SimNode`) owns a `log.SimLog`: an in-memory disk
with a durable part, a staged, unsynced part and a noted commit index. It runs
the node's production pieces: each Ready is planned by `ReadyPlanner` and its
steps executed in order (a `Persist` *writes* the hard state, snapshot and
entries, staged, and the plan waits for the *fsync* that completes later), and
committed internal entries are applied through `ReplicatedState` (purges compact
after `advance`, a removed node leaves). A crash drops the staged write, the rest
of the plan and the core; a restart recovers as the node does, from the durable
log. A storage error injected into a write fail-stops the node.

The network (`network.Network`) drops, delays, duplicates and reorders messages
and cuts links for symmetric and asymmetric partitions. A chaos driver
(`chaos.ChaosDriver`) draws a fault profile per seed and then random actions:
client proposals and ReadIndex requests, crashes and restarts, partitions and
heals, membership changes (add a learner to promote or one kept as a
read-only learner, promote, demote and remove, including the leader, and
remove-and-stop), leadership transfers, purges through the leader,
compactions and forced campaigns.

After every event the checkers (`checkers`) verify election safety, log
matching, leader completeness, state machine safety, commit monotonicity, that
no applied entry is ever lost, that no ReadIndex answer is stale, and that a
failed node never answers a write. After the fault phase comes a liveness phase:
faults stop, partitions heal, crashed nodes restart, and within a bounded number
of ticks a leader must be elected, every client proposal applied, every member
that has not failed caught up (with the same kept learners as the leader) and
every removed node gone; then the failed
nodes are restarted and everyone must catch up.

`bugs` plants deliberate bugs (without touching production files) to show the
checkers fail when they should; `runner` runs many seeds, in one process or
several. See DESIGN.md in this directory for the decisions and trade-offs.
"""
