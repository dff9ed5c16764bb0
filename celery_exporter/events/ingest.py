"""Applying the Redis envelopes of one read to the state, in order, a few messages at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..state import ClusterState
from .envelope import MalformedMessage, decode_envelope
from .schema import Event, read_envelopes

#: Messages decoded before their events are applied. A read behind a backlog holds a few
#: hundred messages; applying their events while they are still in the CPU cache, rather than
#: after decoding the whole read, took 8 % off the CPU per event (benchmarks/README.md).
APPLY_EVERY = 16


def apply_envelopes(
    state: ClusterState,
    payloads: Sequence[bytes],
    malformed: Callable[[str, str], None],
) -> None:
    """Decode and apply the messages' events; ``malformed(reason, detail)`` for the rest.

    Each message is read the fast way into typed events; one it declines takes the checked
    way, after the events before it are applied, so the order holds.
    """
    for start in range(0, len(payloads), APPLY_EVERY):
        chunk = payloads[start : start + APPLY_EVERY]
        events: list[Event] = []
        while chunk:
            read = read_envelopes(chunk, events)
            if read == len(chunk):
                break
            if events:
                state.apply_batch(events)
                events = []
            try:
                parsed = decode_envelope(chunk[read])
            except MalformedMessage as exc:
                malformed(exc.reason, exc.detail)
            else:
                state.handle_batch(parsed)
            chunk = chunk[read + 1 :]
        if events:
            state.apply_batch(events)
