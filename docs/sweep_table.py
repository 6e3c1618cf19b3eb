"""The README's dose-response table, printed from a finished poison-fraction sweep's tables.

Run: python docs/sweep_table.py runs/sweep-poison-fraction

Every cell is a mean over the seeds with its 95 % t-interval (tables/sweep.parquet) or a
verdict with its robustness mark (each point's tables/verdicts.parquet), so the table in the
README is this script's output, not a transcription.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

FINDINGS = ("amplification", "localization", "neuroplasticity", "targeted repair")
SHORT = {"not testable at this scale": "not testable", "inconclusive": "inconclusive"}


def cell(row: pd.Series, percent: bool = False, digits: int = 2) -> str:
    scale, unit = (100, " %") if percent else (1, "")
    fmt = f"{{:.{0 if percent else digits}f}}"
    value = fmt.format(row["mean"] * scale)
    if pd.notna(row["ci_low"]) and pd.notna(row["ci_high"]):
        return f"{value}{unit} [{fmt.format(row['ci_low'] * scale)}, {fmt.format(row['ci_high'] * scale)}]"
    return value + unit


def verdict_cell(sweep: Path, point: str, finding: str) -> str:
    table = pd.read_parquet(sweep / "points" / point / "tables" / "verdicts.parquet")
    row = table[table.finding == finding]
    if row.empty:
        return "-"
    verdict = str(row.verdict.iloc[0])
    text = SHORT.get(verdict, f"**{verdict}**")
    if "robustness" in row and str(row.robustness.iloc[0]).startswith("fragile"):
        text += " (fragile)"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", type=Path)
    args = parser.parse_args()
    findings = pd.read_parquet(args.sweep / "tables" / "sweep.parquet")
    print(
        "| fraction | poisoned logit diff | poisoned accuracy | drop recovered | top-3 origin share "
        "(matched sets) | verdicts: " + " / ".join(FINDINGS) + " |"
    )
    print("|---|---|---|---|---|---|")
    for (point, fraction), rows in findings.groupby(["point", "fraction"], sort=False):
        at = rows.set_index("measure")
        verdicts = " / ".join(verdict_cell(args.sweep, point, f) for f in FINDINGS)
        share = cell(at.loc["localization_top_share"], percent=True)
        matched = cell(at.loc["localization_matched_null"], percent=True)
        print(
            f"| {fraction:g} | {cell(at.loc['score_poisoned'])} | {at.loc['accuracy_poisoned', 'mean']:.2f} "
            f"| {cell(at.loc['neuroplasticity_behaviour_recovery'], percent=True)} | {share} ({matched}) "
            f"| {verdicts} |"
        )


if __name__ == "__main__":
    main()
