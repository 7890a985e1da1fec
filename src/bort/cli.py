"""The `bort` command line: argument parsing and printing only; all work happens in `bort.api`.

Each command has an `add_<name>` function that declares its flags and a `run_<name>` that calls the API.
Errors a user can fix arrive as BortError and are printed as one line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys

from bort.errors import BortError


def add_cost(sub) -> None:
    p = sub.add_parser("cost", help="predicted size and cost of one architecture, without training")
    p.add_argument("--family", default="bert", help="network family (default: bert)")
    p.add_argument("--source", help="source model folder, config.json, hub name or preset (bert family)")
    p.add_argument("--arch", required=True, help="comma-separated parameters, e.g. 4,8,1024,768 for D,A,H,I")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--measure", action="store_true", help="also measure median latency on this machine")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_cost)


def run_cost(args) -> None:
    from bort.api import cost

    out = cost(args.arch, family=args.family, source=args.source, batch_size=args.batch_size,
               seq_len=args.seq_len, measure=args.measure, repeats=args.repeats)
    if args.json:
        print(json.dumps(out))
        return
    for key, value in out.items():
        print(f"{key:>17}: {value:,}" if isinstance(value, int) else f"{key:>17}: {value}")


COMMANDS = [add_cost]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bort", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except BortError as exc:
        print(f"bort {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bort {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
