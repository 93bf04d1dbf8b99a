"""What `syncworker check` says about the key layout on a Redis Cluster.

Two kinds of finding, per routed stream:

- a **violation**: a key the runtime writes in one script with the stream (its dead-letter
  stream, its hand-over hash, a presence key) lands in another slot. Only a stream name with
  a stray `}` and no hash tag can cause it (`worker.keys.derived`); dead-lettering, hand-over
  and pruning would then fail with CROSSSLOT, so `check` fails;
- a **note**: a built-in handler's target (a projection's entity hashes, a relay's target
  stream) lives outside the stream's slot. That is supported: the effect stays atomic with
  its dedupe marker in the target's slot, and the ack follows as its own command
  (`handlers._cluster`), so a crash in between costs a retry that changes nothing. The note
  says whether the ack waits for the effect's replicas (`wait_replicas`), without which a
  failover of the target's primary can lose an effect whose ack survived.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from worker.handler import Handler
from worker.keys import hash_tag, key_slot, same_slot
from worker.runtime.claims import handover_key
from worker.runtime.presence import presence_key
from worker.settings import WorkerSettings


@dataclass
class Findings:
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def inspect(handlers: Sequence[Handler], settings: WorkerSettings) -> Findings:
    """The violations and notes of every route, for the cluster layout of `settings`."""
    found = Findings()
    streams = sorted({s for h in handlers for s in h.streams})
    for stream in streams:
        derived = {
            "dead-letter stream": settings.dead_letter_stream(stream),
            "hand-over hash": handover_key(stream),
            "presence key": presence_key(stream, settings.group, "*", cluster=True),
        }
        for what, key in derived.items():
            if not same_slot(stream, key):
                found.violations.append(
                    f"stream {stream}: its {what} {key} hashes to slot {key_slot(key)}, not "
                    f"the stream's {key_slot(stream)} (a '}}' without a hash tag in the name); "
                    "the scripts that write both would fail with CROSSSLOT. Rename the stream "
                    "or give it a hash tag, e.g. {" + stream.replace("}", "") + "}"
                )
    for handler in handlers:
        for stream in handler.streams:
            found.notes += _target_notes(handler, stream)
    return found


def _target_notes(handler: Handler, stream: str) -> list[str]:
    from handlers.projection import Projection  # the built-in handlers build on worker
    from handlers.relay import Relay

    after = (
        "each effect stays atomic with its dedupe marker in the target's slot, and the ack "
        "follows it as a separate command (a crash in between costs a retry that writes "
        "nothing twice)"
    )
    wanted = getattr(handler, "wait_replicas", 0)
    if wanted:
        after += f"; the ack waits until {wanted} replica(s) hold the effect (wait_replicas)"
    else:
        after += (
            "; a failover of the target's primary can lose an effect whose ack survived: "
            "set wait_replicas = 1 to ack only once a replica holds it"
        )
    notes = []
    prefix = getattr(handler, "prefix", None)
    if isinstance(handler, Projection) and isinstance(prefix, str):
        tag = hash_tag(prefix)
        if tag is None or key_slot(prefix) != key_slot(stream):
            notes.append(
                f"{handler.name} on {stream}: the entity hashes {prefix}<key> are spread over "
                f"other slots than the stream's; {after}. Put the stream and the prefix under "
                "one hash tag to keep the ack inside the script."
            )
    for target in getattr(handler, "targets", ()) or ():
        name = getattr(target, "stream", None)
        relay = isinstance(handler, Relay) and isinstance(name, str)
        if relay and key_slot(str(name)) != key_slot(stream):
            notes.append(
                f"{handler.name} on {stream}: target {name} is in slot {key_slot(str(name))}, "
                f"not the stream's {key_slot(stream)}; {after}."
            )
    return notes
