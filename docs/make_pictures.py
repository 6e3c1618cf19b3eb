"""Make the README's pictures from real runs, as a reader's browser shows them.

    python docs/make_pictures.py                       # docs/report.png from runs/default
    python docs/make_pictures.py --run DIR --sweep DIR # and docs/sweep-poison-fraction.png

docs/report.png: `circuit-plasticity run --out DIR` (the default study), or, when DIR holds a
finished one (its provenance.json), its report re-rendered by today's code; then the report's first screen, as
headless Chromium shows it in a 1400 x 1000 px window. docs/sweep-poison-fraction.png: with
--sweep, `circuit-plasticity sweep experiments/sweep-poison-fraction.yaml --out DIR` (finished
points are skipped; the report is rebuilt from their tables), then its dose-response figure.
Needs Chromium (apt-get install chromium)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "circuit_plasticity", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", type=Path, default=ROOT / "runs" / "default", help="the default study's directory"
    )
    parser.add_argument("--sweep", type=Path, help="the poison-fraction sweep's directory")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args()

    from circuit_plasticity.report.browser import screenshot

    if (args.run / "provenance.json").is_file():  # a finished study: its report, re-rendered
        from circuit_plasticity.api import render_report
        from circuit_plasticity.study.experiment import load_experiment, spec_summary

        spec = load_experiment(None)
        render_report(args.run, spec_summary(spec), list(spec.seeds))
    else:
        cli("run", "--out", str(args.run))
    shot = screenshot(args.run / "report" / "index.html", DOCS / "report.png", args.width, args.height)
    print(f"{shot}: the first screen of {args.run / 'report' / 'index.html'}")
    if args.sweep is not None:
        cli("sweep", str(ROOT / "experiments" / "sweep-poison-fraction.yaml"), "--out", str(args.sweep))
        figure = args.sweep / "report" / "dose-response-fraction.png"
        shutil.copyfile(figure, DOCS / "sweep-poison-fraction.png")
        print(f"{DOCS / 'sweep-poison-fraction.png'}: {figure}")


if __name__ == "__main__":
    main()
