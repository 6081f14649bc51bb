"""Feed streams: how many are open, against `--max-streams`, how long a write may
wait for a slow consumer (`--stream-send-timeout`), and how long one stream lasts
(`--stream-max-age`)."""

from __future__ import annotations

from changeagent.api.errors import ApiError

MAX_STREAMS_DEFAULT = 10_000
# A write the consumer has not taken in this time ends its stream.
SEND_TIMEOUT_S_DEFAULT = 30.0
# A stream ends cleanly after this long; its consumer reconnects and resumes.
MAX_AGE_S_DEFAULT = 3600.0


class StreamSlots:
    """Counts open streams against `--max-streams`."""

    def __init__(
        self,
        streams_max: int = MAX_STREAMS_DEFAULT,
        send_timeout_s: float = SEND_TIMEOUT_S_DEFAULT,
        max_age_s: float = MAX_AGE_S_DEFAULT,
    ) -> None:
        self.streams_max = streams_max
        self.send_timeout_s = send_timeout_s
        self.max_age_s = max_age_s
        self.open = 0

    def take(self) -> None:
        if self.open >= self.streams_max:
            raise ApiError(
                503, f"this node serves at most {self.streams_max} streams", {"Retry-After": "1"}
            )
        self.open += 1

    def give_back(self) -> None:
        self.open -= 1
