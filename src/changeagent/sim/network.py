"""The simulated network: drop, delay, duplication, reordering and partitions.

The network never delivers anything itself. `send()` decides, with the run's
`random.Random`, what becomes of one message: dropped, or delivered once or
twice, each copy after its own delay. Independent delays are what reorder
messages. The caller (the simulator) turns each returned delivery into a
scheduled event; at delivery time it asks `allows()` again, so a partition that
starts while a message is in flight still cuts it.

Partitions are a set of blocked directed links. A symmetric partition blocks
both directions between two groups; an asymmetric one blocks a single direction
(A hears B but B does not hear A), the case that breaks naive leader election.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class NetworkFaults:
    """Fault probabilities and delays, in simulated time units.

    Invariants: probabilities lie in [0, 1]; 1 <= delay_min <= delay_max <= delay_slow_max.
    """

    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    slow_probability: float = 0.0  # a slow message takes up to delay_slow_max: reordering
    delay_min: int = 1
    delay_max: int = 3
    delay_slow_max: int = 30

    def validate(self) -> None:
        for name in ("drop_probability", "duplicate_probability", "slow_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if not 1 <= self.delay_min <= self.delay_max <= self.delay_slow_max:
            raise ValueError("need 1 <= delay_min <= delay_max <= delay_slow_max")


@dataclass(slots=True)
class Network:
    """Decides the fate of messages between node ids; keeps the partition state."""

    random: random.Random
    faults: NetworkFaults = field(default_factory=NetworkFaults)
    blocked: set[tuple[int, int]] = field(default_factory=set)  # (source, target) pairs

    def send(self, source: int, target: int) -> list[int]:
        """Delays (one per copy to deliver) for a message; empty when it is lost."""
        if not self.allows(source, target):
            return []
        faults = self.faults
        if faults.drop_probability and self.random.random() < faults.drop_probability:
            return []
        copies = 1
        if faults.duplicate_probability and self.random.random() < faults.duplicate_probability:
            copies = 2
        return [self._delay() for _ in range(copies)]

    def _delay(self) -> int:
        faults = self.faults
        if faults.slow_probability and self.random.random() < faults.slow_probability:
            return self.random.randint(faults.delay_min, faults.delay_slow_max)
        return self.random.randint(faults.delay_min, faults.delay_max)

    def allows(self, source: int, target: int) -> bool:
        return (source, target) not in self.blocked

    def partition(self, group_a: list[int], group_b: list[int], *, symmetric: bool) -> None:
        """Cut links from group_a to group_b (and back, when symmetric)."""
        for a in group_a:
            for b in group_b:
                if a == b:
                    continue
                self.blocked.add((a, b))
                if symmetric:
                    self.blocked.add((b, a))

    def isolate(self, node: int, others: list[int]) -> None:
        self.partition([node], others, symmetric=True)

    def heal(self) -> None:
        self.blocked.clear()

    def describe_partition(self) -> str:
        return ",".join(f"{a}->{b}" for a, b in sorted(self.blocked)) or "none"
