"""Envelopes: how other frameworks lay an event out in a stream entry, read as a `Message`.

A route names its envelope (`envelope = "cloudevents"` in its config, `@handler(envelope=...)`
in code). `syncworker` is the runtime's own field convention (`type`, `key`, `data`, ...) and
is read by `Message` itself, on the path every other message takes; the others are opened
once per delivery by `open_message`, before routing, so that type filtering sees the type the
publisher meant. An entry the envelope cannot read raises `MalformedMessage`, which the
runtime dead-letters with the reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

from worker.envelopes.cloudevents import open_cloudevent, open_dapr
from worker.envelopes.debezium import open_debezium
from worker.envelopes.faststream import open_faststream
from worker.envelopes.opened import EnvelopeMessage, Opened
from worker.errors import MalformedMessage
from worker.handler import ENVELOPES, EnvelopeName
from worker.message import Message

OPENERS: dict[str, Callable[[Mapping[bytes, bytes]], Opened]] = {
    "cloudevents": open_cloudevent,
    "faststream": open_faststream,
    "dapr": open_dapr,
    "debezium": open_debezium,
}
"""Envelope name -> the function that reads an entry's fields in it (all but `syncworker`)."""


def open_message(msg: Message, envelope: str) -> EnvelopeMessage:
    """`msg` seen through `envelope`.

    Raises:
        MalformedMessage: the entry is not in that envelope, or its payload cannot be decoded.
    """
    return EnvelopeMessage(msg, envelope, OPENERS[envelope](msg.raw))


def opened_first(
    submit: Callable[[Message], None], envelopes: Mapping[str, str]
) -> Callable[[Message], None]:
    """`submit`, handed each message of a stream in `envelopes` already opened, so that the
    lanes order it by its envelope's key. Only workers with such a route wrap their submit.

    An entry its envelope cannot read goes on as it is: the dispatcher opens it again and
    dead-letters it with the reason.
    """

    def submit_opened(msg: Message) -> None:
        envelope = envelopes.get(msg.stream)
        if envelope is not None:
            with contextlib.suppress(MalformedMessage):
                msg = open_message(msg, envelope)
        submit(msg)

    return submit_opened


__all__ = [
    "ENVELOPES",
    "OPENERS",
    "EnvelopeMessage",
    "EnvelopeName",
    "open_message",
    "opened_first",
]
