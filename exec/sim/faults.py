"""Fault events for the simulator: explicit schedules and seeded random ones.

A schedule is plain data (a list of frozen fault records) so that tests can write one
by hand, hypothesis can generate one, and the shrinker can delete entries from a failing
one and replay.  Every fault has a start ``at`` and a ``duration`` in virtual ms; the
simulator applies it at ``at`` and reverts it at ``at + duration`` or at the heal point,
whichever comes first.  Faults may overlap freely.
"""

from __future__ import annotations

import random
from typing import Union

from attrs import frozen


@frozen
class Loss:
    """Drop datagrams from ``src`` to ``dst`` (None = any node) with probability ``rate``."""

    at: int
    duration: int
    rate: float
    src: int | None = None
    dst: int | None = None

    def __str__(self) -> str:
        return (f"@{self.at}+{self.duration} loss {self.rate:.2f} "
                f"{self.src or '*'}->{self.dst or '*'}")


@frozen
class Duplicate:
    """Deliver an extra copy of datagrams with probability ``rate`` (independent delay)."""

    at: int
    duration: int
    rate: float

    def __str__(self) -> str:
        return f"@{self.at}+{self.duration} duplicate {self.rate:.2f}"


@frozen
class Reorder:
    """Add up to ``jitter`` ms of random delay per datagram on every link, which
    reorders datagrams of the same link."""

    at: int
    duration: int
    jitter: int

    def __str__(self) -> str:
        return f"@{self.at}+{self.duration} reorder jitter {self.jitter}ms"


@frozen
class Delay:
    """Add ``extra`` ms to every datagram to or from ``node``."""

    at: int
    duration: int
    node: int
    extra: int

    def __str__(self) -> str:
        return f"@{self.at}+{self.duration} delay n{self.node} +{self.extra}ms"


@frozen
class Partition:
    """Total partition: datagrams only flow inside each group.  Nodes missing from every
    group form one more group together."""

    at: int
    duration: int
    groups: tuple[tuple[int, ...], ...]

    def __str__(self) -> str:
        g = " | ".join(",".join(map(str, grp)) for grp in self.groups)
        return f"@{self.at}+{self.duration} partition {g}"


@frozen
class OneWay:
    """Asymmetric partition: ``src`` cannot reach ``dst`` (``dst`` still reaches ``src``)."""

    at: int
    duration: int
    src: int
    dst: int

    def __str__(self) -> str:
        return f"@{self.at}+{self.duration} oneway {self.src}-/->{self.dst}"


@frozen
class Pause:
    """Freeze ``node``: its timers and receptions wait until the pause ends, then all of
    them are processed late (a stopped process, a VM migration, a long GC)."""

    at: int
    duration: int
    node: int

    def __str__(self) -> str:
        return f"@{self.at}+{self.duration} pause n{self.node}"


@frozen
class Crash:
    """``node`` dies (all state lost) and restarts after ``duration`` with the ring seq it
    persisted."""

    at: int
    duration: int
    node: int

    def __str__(self) -> str:
        return f"@{self.at}+{self.duration} crash n{self.node}"


@frozen
class Leave:
    """``node`` shuts down cleanly (LEAVE message), restarting after ``duration``."""

    at: int
    duration: int
    node: int

    def __str__(self) -> str:
        return f"@{self.at}+{self.duration} leave n{self.node}"


Fault = Union[Loss, Duplicate, Reorder, Delay, Partition, OneWay, Pause, Crash, Leave]
NODE_FAULTS = (Pause, Crash, Leave)


def random_schedule(rng: random.Random, nodes: list[int], count: int, start: int,
                    window: int, token: int) -> list[Fault]:
    """``count`` faults with start times uniform in ``[start, start + window)``.

    Durations scale with the token timeout so that a fault is sometimes shorter than a
    token loss (a hiccup Totem must ride out) and sometimes several timeouts long (a real
    membership change).  The kind mix favours the faults that change membership.
    """
    kinds = [Loss, Duplicate, Reorder, Delay, Partition, OneWay, Pause, Crash, Leave]
    weights = [3, 1, 1, 1, 3, 2, 2, 2, 1]
    if len(nodes) == 1:  # nothing to partition from
        kinds, weights = [Loss, Duplicate, Pause, Crash, Leave], [1, 1, 2, 2, 1]
    out: list[Fault] = []
    for _ in range(count):
        kind = rng.choices(kinds, weights)[0]
        at = start + rng.randrange(max(window, 1))
        duration = rng.choice((rng.randint(token // 10, token), rng.randint(token, 4 * token)))
        node = rng.choice(nodes)
        if kind is Loss:
            whole = rng.random() < 0.5
            out.append(Loss(at, duration, round(rng.uniform(0.05, 0.6), 2),
                            None if whole else node,
                            None if whole else rng.choice(nodes)))
        elif kind is Duplicate:
            out.append(Duplicate(at, duration, round(rng.uniform(0.05, 0.5), 2)))
        elif kind is Reorder:
            out.append(Reorder(at, duration, rng.randint(2, max(3, token // 8))))
        elif kind is Delay:
            out.append(Delay(at, duration, node, rng.randint(5, max(6, token // 2))))
        elif kind is Partition:
            shuffled = list(nodes)
            rng.shuffle(shuffled)
            k = rng.randint(2, min(3, len(nodes)))
            cuts = sorted(rng.sample(range(1, len(nodes)), k - 1))
            groups = [tuple(sorted(shuffled[a:b])) for a, b in zip([0] + cuts, cuts + [len(nodes)])]
            out.append(Partition(at, duration, tuple(groups)))
        elif kind is OneWay:
            dst = rng.choice([n for n in nodes if n != node])
            out.append(OneWay(at, duration, node, dst))
        else:
            out.append(kind(at, duration, node))
    out.sort(key=lambda f: f.at)
    return out


_KINDS = {cls.__name__.lower(): cls for cls in
          (Loss, Duplicate, Reorder, Delay, Partition, OneWay, Pause, Crash, Leave)}


def to_json(schedule: list[Fault]) -> list[dict]:
    """A schedule as JSON-able dicts (``{"kind": "crash", "at": .., ...}``)."""
    from attrs import asdict

    return [{"kind": type(f).__name__.lower(), **asdict(f)} for f in schedule]


def from_json(items: list[dict]) -> list[Fault]:
    """Inverse of :func:`to_json`; raises ValueError naming the bad entry."""
    out: list[Fault] = []
    for i, item in enumerate(items):
        try:
            fields = dict(item)
            cls = _KINDS[fields.pop("kind")]
            if cls is Partition:
                fields["groups"] = tuple(tuple(int(n) for n in g) for g in fields["groups"])
            fault = cls(**fields)
            if not isinstance(fault.at, int) or not isinstance(fault.duration, int) \
                    or fault.duration < 0:
                raise ValueError("at/duration must be integers, duration >= 0")
            out.append(fault)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"schedule entry {i}: {exc!r}") from None
    return out
