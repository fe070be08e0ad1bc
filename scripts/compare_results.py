"""Is your rerun of a study within the spread of the committed replicates? One line per headline number.

Retraining is bit-identical only on the same CPU and thread layout; elsewhere every number after it is
statistical. This compares the headline numbers of your results/<experiment>/headline.json (written by
scripts/figures.py, the last step of ./reproduce.sh) with the committed reference of independent replicates,
results/reference/<experiment>.json: a number is "within" when it lies inside [min − spread, max + spread] of
the replicates' values (spread = max − min), a verdict "agrees" when it equals every replicate's, and is
"one of the replicates'" when the replicates themselves disagree and it equals one of them (not a stable result).

    source .venv/bin/activate                                      # the project's environment (./reproduce.sh setup)
    python scripts/compare_results.py                              # after ./reproduce.sh: results/default vs the reference
    python scripts/compare_results.py --experiment default --results /other/results/default
    python scripts/compare_results.py --build default default_replicate   # (maintainers) write the reference

Exit status 0 when every number is within and every verdict agrees, 1 otherwise, 2 when a file is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from freeenergy.analysis.headline import compare, reference  # noqa: E402
from freeenergy.records.io import RecordError, read_json, write_json, write_text  # noqa: E402


def build(experiments: list[str], results_root: Path, out: Path) -> None:
    """The reference of ``experiments`` (the first names it): ``<out>.json`` and a markdown table beside it."""
    replicates = {name: read_json(results_root / name / "headline.json") for name in experiments}
    committed = reference(replicates)
    write_json(out, committed)
    lines = [
        f"# Replicates of the `{experiments[0]}` study: each headline number in each replicate",
        "",
        "| number | " + " | ".join(experiments) + " | spread (max − min) |",
        "|" + "---|" * (len(experiments) + 2),
    ]
    for name, entry in committed.items():
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in entry["values"].values()]
        spread = f"{entry['spread']:.3g}" if "spread" in entry else "—"
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {spread} |")
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"reference of {len(experiments)} replicates, {len(committed)} numbers → {out} and {out.with_suffix('.md')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="default")
    parser.add_argument("--results", type=Path, help="your results folder (default: results/<experiment>)")
    parser.add_argument("--reference", type=Path, help="default: results/reference/<experiment>.json")
    parser.add_argument("--build", nargs="+", metavar="EXPERIMENT", help="write the reference from these replicates")
    args = parser.parse_args(argv)
    reference_path = args.reference or REPO / "results" / "reference" / f"{args.experiment}.json"
    try:
        if args.build:
            build(args.build, REPO / "results", REPO / "results" / "reference" / f"{args.build[0]}.json")
            return 0
        yours = read_json(
            (args.results or REPO / "results" / args.experiment) / "headline.json",
            fix="run ./reproduce.sh (or scripts/figures.py) first: it writes headline.json",
        )
        committed = read_json(reference_path, fix="it is committed with the repository; check out results/reference/")
    except RecordError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = compare(yours, committed)
    width = max(len(row.name) for row in rows)
    for row in rows:
        mine = f"{row.yours:.3g}" if isinstance(row.yours, float) else str(row.yours)
        print(f"{row.name:<{width}}  yours {mine:>22}  replicates {row.replicates:<40}  {row.verdict}")
    bad = [row for row in rows if row.verdict in ("outside", "disagrees", "not comparable")]
    unstable = [row for row in rows if row.verdict == "one of the replicates'"]
    print(
        f"\n{len(rows) - len(bad)} of {len(rows)} headline numbers within the replicates' spread (or agreeing; "
        f"{len(unstable)} of them verdicts on which the replicates themselves disagree); "
        f"{len(bad)} not: " + (", ".join(row.name for row in bad[:8]) or "none")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
