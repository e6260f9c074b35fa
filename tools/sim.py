"""corosync-sim: run the deterministic Totem cluster simulator from the command line.

    corosync-sim --nodes N --seed S --faults F [--duration T] [--replay] [--json]

Exit status 0 and the one-line summary ``N nodes, F faults, M messages delivered,
0 violations`` when every checker passes; 1 (with the seed, the violations, a shrunk
fault schedule and a minimal event trace) otherwise; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from corosync.exec.sim.cluster import LoadParams, SimConfig, Simulation
from corosync.exec.sim.faults import from_json, to_json
from corosync.exec.sim.shrink import minimal_trace, shrink


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="corosync-sim",
                                description="Deterministic simulation of a Totem cluster "
                                            "under faults, with safety/liveness checkers.")
    p.add_argument("--nodes", type=int, default=3, help="number of nodes, 1..32 (3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--faults", type=int, default=0, help="number of random fault events (0)")
    p.add_argument("--duration", type=int, default=None,
                   help="fault window in virtual ms (default: max(2000, 300 × faults))")
    p.add_argument("--replay", action="store_true",
                   help="print the full event trace of the run (deterministic)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--token", type=int, default=400, help="totem token timeout, virtual ms (400)")
    p.add_argument("--send-join", type=int, default=0,
                   help="totem send_join: random 0..N ms delay before each JOIN (0 = off)")
    p.add_argument("--max-size", type=int, default=65536,
                   help="largest application message in bytes (65536)")
    p.add_argument("--interval", type=int, default=40,
                   help="mean ms between application messages per node (40)")
    p.add_argument("--no-shrink", action="store_true", help="do not shrink a failing run")
    p.add_argument("--schedule", default=None,
                   help="explicit fault schedule as JSON (or @FILE), as printed for a "
                        "shrunk failing run; replaces the random one (--faults ignored)")
    return p


def _nodes_of(fault) -> list[int]:
    nodes = [getattr(fault, k) for k in ("node", "src", "dst") if hasattr(fault, k)]
    nodes += [n for g in getattr(fault, "groups", ()) for n in g]
    return [n for n in nodes if n is not None]


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `corosync-sim ... | head`: the reader left; say nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if not 1 <= args.nodes <= 32:
        print("corosync-sim: --nodes must be in 1..32", file=sys.stderr)
        return 2
    if args.faults < 0 or (args.duration is not None and args.duration < 0):
        print("corosync-sim: --faults and --duration must not be negative", file=sys.stderr)
        return 2
    if args.token < 50 or args.max_size < 20 or args.interval < 1 or args.send_join < 0:
        print("corosync-sim: --token >= 50, --max-size >= 20, --interval >= 1, "
              "--send-join >= 0",
              file=sys.stderr)
        return 2
    schedule = None
    if args.schedule is not None:
        try:
            text = args.schedule
            if text.startswith("@"):
                with open(text[1:], encoding="utf-8") as fh:
                    text = fh.read()
            schedule = from_json(json.loads(text))
        except (OSError, ValueError) as exc:
            print(f"corosync-sim: --schedule: {exc}", file=sys.stderr)
            return 2
        if any(n > args.nodes for f in schedule for n in _nodes_of(f)):
            print("corosync-sim: --schedule names a node above --nodes", file=sys.stderr)
            return 2
        args.faults = len(schedule)
    cfg = SimConfig(nodes=args.nodes, seed=args.seed, faults=args.faults, schedule=schedule,
                    duration=args.duration, record_log=args.replay,
                    totem={"token": args.token, "token_coefficient": 25,
                           "send_join": args.send_join},
                    load=LoadParams(interval=args.interval, large_max=args.max_size))
    result = Simulation(cfg).run()
    if args.replay:
        for line in result.log:
            print(line)
    summary = (f"{args.nodes} nodes, {args.faults} faults, {result.messages_delivered} "
               f"messages delivered, {len(result.violations)} violations")
    if args.json:
        print(json.dumps({
            "nodes": args.nodes, "seed": args.seed, "faults": args.faults,
            "schedule": [str(f) for f in result.schedule],
            "messages_sent": len(result.trace.sent),
            "messages_delivered": result.messages_delivered,
            "deliveries": result.deliveries,
            "violations": [str(v) for v in result.violations],
            "heal_ms": result.trace.heal_time, "bound_ms": result.trace.bound,
            "convergence_ms": result.convergence_ms,
            "events": result.events, "virtual_ms": result.virtual_ms,
            "wall_s": round(result.wall_s, 3),
            "network": {"sent": result.net.sent, "delivered": result.net.delivered,
                        "lost": result.net.lost, "blocked": result.net.blocked,
                        "duplicated": result.net.duplicated},
        }, indent=2))
    else:
        print(summary)
    if not result.violations:
        return 0
    out = sys.stderr if args.json else sys.stdout
    print(f"VIOLATIONS with seed {args.seed} ({args.nodes} nodes, {args.faults} faults):",
          file=out)
    for v in result.violations[:20]:
        print(f"  {v}", file=out)
    if len(result.violations) > 20:
        print(f"  ... {len(result.violations) - 20} more", file=out)
    small = cfg
    if not args.no_shrink and result.schedule:
        small, _ = shrink(cfg, result)
        print(f"shrunk to {len(small.schedule)} of {len(result.schedule)} faults "
              f"(replay: explicit schedule below, heal at "
              f"{small.warmup + (small.duration or 0)} ms):", file=out)
        for f in small.schedule:
            print(f"  {f}", file=out)
        print(f"replay: corosync-sim --nodes {args.nodes} --seed {args.seed} "
              f"--token {args.token} --send-join {args.send_join} "
              f"--max-size {args.max_size} --interval {args.interval} "
              f"--duration {small.duration} --schedule "
              f"'{json.dumps(to_json(small.schedule), separators=(',', ':'))}'", file=out)
    replayed, lines = minimal_trace(small)
    if replayed.violations:
        print(f"minimal trace for: {replayed.violations[0]}", file=out)
        for line in lines:
            print(f"  {line}", file=out)
    return 1


if __name__ == "__main__":
    sys.exit(main())
