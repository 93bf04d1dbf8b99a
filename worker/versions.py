"""Schema evolution: one handler, several versions of its payload's shape.

A producer that changes an event's shape marks the new payloads with a schema version
(`schema_version` field, `Publisher.publish(..., schema_version=2)`; the `schemaversion`
CloudEvents extension). A handler written for the newest shape declares every version it
accepts and how to bring an older one forward:

```python
model = Versions(
    {1: OrderCompletedV1, 2: OrderCompleted},
    upcast={1: lambda v1: {"order_id": v1.id, "total": v1.amount, "currency": "EUR"}},
)
```

Each entry validates against the model of its own version, then each upcaster turns the
parsed event into the payload of the next declared version, which validates in turn, until
the newest: the handler only ever sees `msg.event` in the newest shape, so the old events
still in the stream (or replayed from a dead letter) keep working while producers move on.

Entries without a schema version are version `unversioned` (1 unless given): the events
published before anyone numbered them. A version with no model, or with no upcaster on its
way to the newest, is an `InvalidEvent` (dead-lettered at once, with the reason).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from worker.errors import InvalidEvent

Upcaster = Callable[[Any], Any]
"""Takes an event parsed at one version, returns the payload (a dict, or a model instance)
of the next declared version."""


class Versions:
    """The models of each schema version of one event, newest last, and the upcasters.

    Args:
        models: schema version -> the type its payload validates against.
        upcast: schema version -> the function that turns an event parsed at that version
            into the payload of the next declared version. Every version but the newest needs
            one for its entries to be handled; a version without one is dead-lettered.
        unversioned: the version of entries that carry no schema version.

    Raises:
        ValueError: no models, or an upcaster for a version that has no model or is newest.
    """

    def __init__(
        self,
        models: Mapping[int, Any],
        upcast: Mapping[int, Upcaster] | None = None,
        *,
        unversioned: int = 1,
    ) -> None:
        if not models:
            raise ValueError("Versions needs the model of at least one schema version")
        self.models: dict[int, Any] = {int(v): m for v, m in sorted(models.items())}
        self.upcast: dict[int, Upcaster] = dict(upcast or {})
        self.unversioned = unversioned
        self.latest = max(self.models)
        stray = sorted(set(self.upcast) - (set(self.models) - {self.latest}))
        if stray:
            raise ValueError(
                f"upcasters for schema version(s) {', '.join(map(str, stray))}, which have no "
                f"model or are the newest ({self.latest})"
            )

    @property
    def name(self) -> str:
        """The newest model's name, for error texts."""
        newest = self.models[self.latest]
        return str(getattr(newest, "__name__", repr(newest)))

    def steps(self, version: int) -> list[int]:
        """The declared versions from `version` up to the newest, in order.

        Raises:
            InvalidEvent: `version` has no model, or no upcaster on the way.
        """
        if version not in self.models:
            known = ", ".join(map(str, self.models))
            raise InvalidEvent(
                f"schema version {version} of {self.name} has no model (known: {known})"
            )
        path = [v for v in self.models if v >= version]
        for older, newer in itertools.pairwise(path):
            if older not in self.upcast:
                raise InvalidEvent(
                    f"schema version {older} of {self.name} has no upcaster to version {newer}"
                )
        return path

    def __repr__(self) -> str:
        return f"Versions({self.models!r}, upcast={sorted(self.upcast)!r})"


def as_versions(model: Any) -> Versions | None:
    """`model` as `Versions` when it declares versions (a `Versions`, or a dict of version to
    model, which is `Versions` without upcasters); None for a plain model."""
    if isinstance(model, Versions):
        return model
    if isinstance(model, dict):
        return Versions(model)
    return None


def parse_versioned(
    versions: Versions,
    version: int | None,
    payload: Any,
    validate: Callable[[Any, Any], Any],
    describe: Callable[[Any, ValidationError], str],
) -> Any:
    """A payload of schema `version` parsed and upcast to the newest version.

    Args:
        versions: the handler's declared versions.
        version: the entry's schema version, or None (then `versions.unversioned`).
        payload: the entry's decoded `data`.
        validate: `(model, payload) -> parsed`, raising `ValidationError`.
        describe: one line for a `ValidationError`, naming the model and each error.

    Raises:
        InvalidEvent: an unknown version, a missing upcaster, a payload that does not
            validate, or an upcaster whose result does not validate against the next version.
    """
    path = versions.steps(versions.unversioned if version is None else version)
    event = payload
    for step, current in enumerate(path):
        model = versions.models[current]
        where = (
            f"schema version {current}"
            if step == 0
            else f"upcast from schema version {path[step - 1]} to {current}"
        )
        try:
            if step > 0:
                # Building the next version's model inside the upcaster validates it there.
                event = versions.upcast[path[step - 1]](event)
            event = validate(model, event)
        except ValidationError as exc:
            raise InvalidEvent(f"{where}: {describe(model, exc)}") from None
    return event
