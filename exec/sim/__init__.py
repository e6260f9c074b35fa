"""Deterministic cluster simulator for the Totem stack (see docs/corosync-sim.md).

Typical use::

    from corosync.exec.sim import SimConfig, run
    result = run(SimConfig(nodes=5, seed=1, faults=20))
    assert not result.violations, result.violations
"""

from .checkers import Violation, check_all
from .cluster import LoadParams, Result, SimConfig, Simulation, convergence_bound, run
from .faults import (Crash, Delay, Duplicate, Fault, Leave, Loss, OneWay, Partition, Pause,
                     Reorder, random_schedule)
from .network import LinkParams

__all__ = ["Violation", "check_all", "LoadParams", "Result", "SimConfig", "Simulation",
           "convergence_bound", "run", "Crash", "Delay", "Duplicate", "Fault", "Leave", "Loss",
           "OneWay", "Partition", "Pause", "Reorder", "random_schedule", "LinkParams"]
