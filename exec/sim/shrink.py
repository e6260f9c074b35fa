"""Shrinking a failing run to a small fault schedule, and printing a minimal trace.

Runs are deterministic, so a failing (seed, schedule) can be replayed at will.  The
shrinker replays with fewer faults — first the shortest failing prefix of the schedule,
then delta debugging (drop chunks of halving size, down to single faults) — and keeps
every reduction that still shows a violation of one of the original kinds.  The heal
point stays where it was, so each replay sees the same time line minus some faults.
"""

from __future__ import annotations

import time

from attrs import evolve

from .checkers import Violation
from .cluster import Result, SimConfig, Simulation
from .faults import Fault


def _fails(cfg: SimConfig, schedule: list[Fault], kinds: set[str]) -> Result | None:
    r = Simulation(evolve(cfg, schedule=list(schedule), record_log=False)).run()
    return r if any(v.kind in kinds for v in r.violations) else None


def shrink(cfg: SimConfig, failed: Result, *, max_runs: int = 60,
           max_seconds: float = 60.0) -> tuple[SimConfig, Result]:
    """Return a config with an explicit, smaller schedule that still fails, and its result."""
    kinds = {v.kind for v in failed.violations}
    sim = Simulation(cfg)
    window = sim.heal_time - cfg.warmup
    base = evolve(cfg, duration=window, schedule=list(failed.schedule))
    best, best_result = list(failed.schedule), failed
    t0 = time.monotonic()
    runs = 0

    def budget() -> bool:
        return runs < max_runs and time.monotonic() - t0 < max_seconds

    # 1. shortest failing prefix (binary search; failures are not monotonic in the
    #    prefix length, so this finds *a* short failing prefix, which is all we need).
    lo, hi = 0, len(best)
    while lo < hi and budget():
        mid = (lo + hi) // 2
        runs += 1
        r = _fails(base, best[:mid], kinds)
        if r is not None:
            best, best_result, hi = best[:mid], r, mid
        else:
            lo = mid + 1
    # 2. delta debugging: remove chunks while it still fails.
    chunk = max(len(best) // 2, 1)
    while chunk >= 1 and best and budget():
        i = 0
        changed = False
        while i < len(best) and budget():
            trial = best[:i] + best[i + chunk:]
            runs += 1
            r = _fails(base, trial, kinds)
            if r is not None:
                best, best_result, changed = trial, r, True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    return evolve(base, schedule=best), best_result


def _mentions(v: Violation) -> list[str]:
    words = []
    for w in v.detail.replace("[", " ").replace("]", " ").replace(",", " ").split():
        w = w.strip("'\"")
        if "#" in w:
            words.append(w)
    return words


def minimal_trace(cfg: SimConfig, limit: int = 250) -> tuple[Result, list[str]]:
    """Replay ``cfg`` with the event log on and keep the lines that explain the first
    violation: faults, heal, starts/crashes, confchgs, Totem log lines, and the events
    of the messages the violation names."""
    r = Simulation(evolve(cfg, record_log=True)).run()
    if not r.violations:
        return r, []
    first = r.violations[0]
    tags = _mentions(first)
    who = {f"n{n}" for n in first.nodes}
    keep = []
    for line in r.log:
        text = line[10:]
        if text.startswith(("FAULT", "END", "HEAL", "CHECK", "CONVERGED")):
            keep.append(line)
            continue
        if who and text.split(" ", 1)[0] not in who:
            continue
        if (" confchg " in text or " down (" in text or " start (" in text
                or "EXCEPTION" in text or "[TOTEM]" in text
                or any(f" {t} " in line + " " for t in tags)):
            keep.append(line)
    if len(keep) > limit:
        keep = keep[:limit // 2] + [f"   ... {len(keep) - limit} lines ..."] + keep[-limit // 2:]
    return r, keep
