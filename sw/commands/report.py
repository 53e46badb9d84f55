"""``velcro report``: an HTML page and a Markdown file of plots and tables over the results
of the other commands."""

from __future__ import annotations

from pathlib import Path

from ..report.inputs import INPUTS


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="HTML page and Markdown tables of the results: accuracy versus C, VQ "
        "sweep, Deep Compression, conv cycles, resources against the U280",
        description="Gather the result files of velcro demo, vq --sweep, deepcompress, bench "
        "hw and build estimate, and every record of compress --json and run --json in the "
        "results folder, into DIR/index.html and DIR/report.md (with the plots as PNG "
        "files beside them, referenced by relative path). A section whose file is missing "
        "says which command measures it; a file that is not valid JSON of the shape its "
        "writer gives it stops the report (exit code 2) and leaves an earlier one in place.")
    p.add_argument("--out", type=Path, default=Path("report"), metavar="DIR",
                   help="output folder (default report/)")
    p.add_argument("--results", type=Path, default=Path("demo"), metavar="DIR",
                   help="folder of the result files (default demo/)")
    files = p.add_argument_group(
        "result files", "each defaults to its name in --results; a file given here must exist")
    for key, spec in INPUTS.items():
        files.add_argument(f"--{key.replace('_', '-')}", dest=key, type=Path, metavar="FILE",
                           help=f"default RESULTS/{spec.name}, written by "
                           f"'{spec.writer} {spec.output.format(dir='RESULTS', path='FILE')}'"
                           + spec.note)
    p.set_defaults(func=cmd_report, needs_torch=False)


def cmd_report(args) -> None:
    from ..report.render import report

    sections, written = report(args.results, args.out, {key: getattr(args, key)
                                                        for key in INPUTS})
    width = max(len(s.title) for s in sections)
    for s in sections:
        if s.measured:
            print(f"rendered      {s.title:{width}s}  {', '.join(map(str, s.sources))}")
        else:
            print(f"not measured  {s.title:{width}s}  run: {s.command}")
    plots = len(written) - 2
    print(f"wrote {written[0]}, {written[1]} and {plots} plot{'s' * (plots != 1)}")
