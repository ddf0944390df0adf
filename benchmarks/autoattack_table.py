"""PGD's and AutoAttack's robust accuracy side by side, on the same points, from a harness run.

Reads ``results.json`` of ``python3 -m evaluations run`` (any preset with ``autoattack`` among the attacks)
and prints one Markdown row per defence, norm and ε: PGD's accuracy (torchattacks ``pgd`` in L∞, ``pgdl2`` in
L2), AutoAttack's, the strongest single attack's, and whether AutoAttack is significantly weaker than any
single attack (the report's exact McNemar test at ``checklist.level``), all on the points AutoAttack
attacked. The checklist's flags are counted per defence.

Run: ``python3 benchmarks/autoattack_table.py results/quick/results.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PGD = {"linf": "pgd", "l2": "pgdl2"}


def rows(results: dict) -> list[str]:
    lines = [
        "| defence | norm | ε | points | PGD (%) | AutoAttack (%) | strongest single attack (%) "
        "| AutoAttack significantly weaker than |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in results["defences"].items():
        audit = entry.get("audit")
        if not audit:
            continue
        cells: dict[tuple[str, float], list[dict]] = {}
        for row in audit["autoattack"]:
            cells.setdefault((row["norm"], row["eps"]), []).append(row)
        for (norm, eps), compared in sorted(cells.items()):
            pgd = next((r for r in compared if r["attack"] == PGD[norm]), None)
            strongest = min(compared, key=lambda r: r["accuracy_attack"])
            weaker = [r["attack"] for r in compared if r["weaker"]]
            pgd_text = "–" if pgd is None else f"{100 * pgd['accuracy_attack']:.0f}"
            lines.append(
                f"| {name} | {norm} | {eps:g} | {compared[0]['points']} | "
                f"{pgd_text} | "
                f"{100 * compared[0]['accuracy_autoattack']:.0f} | "
                f"{100 * strongest['accuracy_attack']:.0f} ({strongest['attack']}) | "
                f"{', '.join(weaker) or 'none'} |"
            )
    flags = {
        n: (len(e["audit"]["flags"]), len(e["audit"]["checks"]))
        for n, e in results["defences"].items()
        if e.get("audit")
    }
    lines += ["", "| defence | checklist flags |", "|---|---|"]
    lines += [f"| {n} | {f} of {c} |" for n, (f, c) in flags.items()]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results.json of a harness run")
    args = parser.parse_args(argv)
    print("\n".join(rows(json.loads(args.results.read_text()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
