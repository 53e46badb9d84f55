"""``velcro bench``: measured throughput figures (printed, optionally written as JSON)."""

from __future__ import annotations

from pathlib import Path

from ..cli import write_json


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure throughput (profile: profiling versus inference)")
    p.add_argument("what", nargs="?", default="profile", choices=["profile"])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--json", type=Path)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> None:
    from ..bench import bench_profile

    result = bench_profile(args.images)
    for key, value in result.items():
        print(f"{key:32s} {value}")
    if args.json:
        write_json(args.json, result)
