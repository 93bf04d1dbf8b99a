"""What the chaos publisher sends: good events, and hypothesis-generated bad entries.

Good events each name their own entity at version 1, so the projection applies each exactly
once and any second application shows in its counter. Bad entries are drawn by hypothesis from
the chaos seed: random bytes in field names and values, a missing or invalid `data`, a version
that is not a number, an unknown or missing type. Every one of them must end dead-lettered.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from tests.chaos.plugin import EVENT_TYPE, defect

Fields = dict[bytes, bytes]

_names = st.binary(min_size=1, max_size=16).filter(lambda name: not name.startswith(b"dlq_"))
_values = st.binary(max_size=48)
_random_fields = st.dictionaries(_names, _values, min_size=1, max_size=8)


@st.composite
def _broken_event(draw: st.DrawFn) -> Fields:
    """A well-formed event with one part broken, and random extra fields beside it."""
    fields: Fields = {
        b"type": EVENT_TYPE,
        b"key": b"bad-" + draw(st.binary(min_size=1, max_size=8)).hex().encode(),
        b"version": b"1",
        b"data": b'{"bad":true}',
    }
    broken = draw(st.sampled_from(["data", "no-data", "version", "type", "no-type", "key"]))
    if broken == "data":
        fields[b"data"] = draw(_values.filter(lambda v: not v.startswith(b"{")))
    elif broken == "version":
        fields[b"version"] = draw(_values.filter(lambda v: not v.isdigit()))
    elif broken == "type":
        fields[b"type"] = draw(_values.filter(lambda v: v != EVENT_TYPE))
    elif broken == "key":
        fields[b"key"] = b""
    else:
        del fields[b"data" if broken == "no-data" else b"type"]
    extra = draw(st.dictionaries(_names, _values, max_size=4))
    return {**extra, **fields}


bad_entry = st.one_of(_random_fields, _broken_event()).filter(lambda f: defect(f) is not None)
"""An entry the chaos handler must reject: the strategy the publisher draws from."""


def draw_bad_entries(seed: int, count: int) -> list[Fields]:
    """`count` bad entries drawn by hypothesis, the same ones for the same seed."""
    found: list[Fields] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(bad_entry)
    def collect(entry: Fields) -> None:
        found.append(entry)

    collect()
    assert len(found) >= count, f"hypothesis drew {len(found)} bad entries, not {count}"
    return found[:count]


@dataclass(frozen=True, slots=True)
class Planned:
    """One entry the publisher will add: its position, fields and whether it is good."""

    seq: int
    fields: Fields
    good: bool


def plan(rng: random.Random, seed: int, total: int, bad: int, huge: int = 0) -> list[Planned]:
    """`total` entries, `bad` of them bad (`huge` of those with thousands of fields), at
    seeded random positions."""
    bad_entries = draw_bad_entries(seed, bad)
    for i in range(huge):
        bad_entries[i] = huge_entry(rng, bad_entries[i])
    rng.shuffle(bad_entries)
    positions = set(rng.sample(range(total), bad))
    entries: list[Planned] = []
    for seq in range(total):
        if seq in positions:
            entries.append(Planned(seq, bad_entries.pop(), good=False))
        else:
            entries.append(Planned(seq, good_event(seq, rng), good=True))
    return entries


def huge_entry(rng: random.Random, entry: Fields) -> Fields:
    """`entry` with 4,100 to 6,000 more random fields: past where Lua's `unpack` of all of an
    entry's field names and values (about 8,000 values) fails."""
    extra = {
        b"x%d-" % i + rng.randbytes(4): rng.randbytes(8) for i in range(rng.randint(4100, 6000))
    }
    return {**extra, **entry}


def good_event(seq: int, rng: random.Random) -> Fields:
    """Event `seq`: entity `e<seq>` at version 1, with a little payload."""
    data = {"seq": seq, "amount": rng.randint(1, 10_000), "note": "x" * rng.randint(0, 64)}
    return {
        b"type": EVENT_TYPE,
        b"key": f"e{seq}".encode(),
        b"version": b"1",
        b"data": json.dumps(data, separators=(",", ":")).encode(),
    }
