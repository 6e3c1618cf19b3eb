"""Sweeps: grid expansion and validation before anything runs; the local executor and a real
local Ray cluster give the same tables; a sweep killed mid-point loses nothing on rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from circuit_plasticity.errors import UserError
from circuit_plasticity.sweep.spec import load_sweep

# one seed, one epoch per phase, no repair or tracking: ~40 s a point on a busy 2-core box
TINY_SPEC = Path(__file__).resolve().parent.parent / "experiments" / "tiny-study.yaml"
TINY_BASE = f"base: {TINY_SPEC}\n"
TINY = TINY_BASE + "grid:\n  fraction: [0.5, 1.0]\n"


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "circuit_plasticity", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        **kwargs,
    )


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_grid_and_points_expand_to_named_validated_points(tmp_path):
    (tmp_path / "specs").mkdir()
    write(tmp_path / "specs", "seeds: [3]\nlr: 1.0e-3\n", "base.yaml")
    sweep = load_sweep(
        write(
            tmp_path,
            "base: specs/base.yaml\ngrid:\n  fraction: [0.05, 1.0]\n  analysis.n: [40, 80]\n"
            "points:\n  - {seeds: [0, 1], poison: name-moving}\n",
        )
    )
    names = [p.name for p in sweep.points]
    assert names == [
        "fraction=0.05,analysis.n=40",
        "fraction=0.05,analysis.n=80",
        "fraction=1.0,analysis.n=40",
        "fraction=1.0,analysis.n=80",
        "seeds=0-1,poison=name-moving",
    ]
    first, last = sweep.points[1], sweep.points[-1]
    assert first.spec.fraction == 0.05 and first.spec.analysis.n == 80 and first.spec.seeds == [3]
    assert first.spec.lr == 1e-3 and first.spec.analysis.n_random == 100  # base, then defaults
    assert last.spec.seeds == [0, 1] and last.spec.poison == "name-moving" and last.spec.fraction == 1.0
    assert sweep.variables == ["fraction", "analysis.n", "seeds", "poison"]
    assert [p.name for p in load_sweep(write(tmp_path, "base: {seeds: [0]}\n")).points] == ["base"]


@pytest.mark.parametrize(
    "grid, message",
    [
        ("grid:\n  fractoin: [0.5]\n", "unknown key 'fractoin'; valid keys"),
        ("grid:\n  analysis.nn: [20]\n", "unknown key 'analysis.nn'"),
        ("grid:\n  fraction: []\n", "grid key 'fraction' (line 3) is an empty list"),
        ("grid:\n  fraction: [0.5, 2.0]\n", "point fraction=2.0: fraction: must lie in [0, 1]"),
        ("grid:\n  lr: [1.0e-3, fast]\n", "'lr' must be float, got 'fast'"),
        ("points:\n  - {analysis.n: 5}\n", "analysis.n=5: analysis: n >= 20"),
    ],
)
def test_bad_grid_is_refused_before_anything_runs(tmp_path, grid, message):
    with pytest.raises(UserError) as error:
        load_sweep(write(tmp_path, TINY_BASE + grid))
    assert message in str(error.value)


def test_bad_grid_exits_2_naming_the_key_and_writes_nothing(tmp_path):
    r = cli(
        "sweep",
        str(write(tmp_path, TINY_BASE + "grid:\n  fraction: [0.5, 2.0]\n")),
        "--out",
        str(tmp_path / "o"),
    )
    assert r.returncode == 2 and "fraction" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_ray_executor_without_ray_says_how_to_install(tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None; sys.argv = ['circuit-plasticity', 'sweep', "
        f"{str(write(tmp_path, TINY))!r}, '--out', {str(tmp_path / 'o')!r}, '--executor', 'ray']; "
        "from circuit_plasticity.cli import main; main()"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2 and "pip install 'circuit-plasticity[ray]'" in r.stderr
    assert not (tmp_path / "o").exists()


def sweep_tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (
        pd.read_parquet(out / "tables" / "sweep.parquet"),
        pd.read_parquet(out / "tables" / "sweep_verdicts.parquet"),
    )


@pytest.fixture(scope="module")
def ray_sweep(tmp_path_factory) -> Path:
    """The tiny sweep, uninterrupted, on a local Ray cluster started and stopped by `sweep`."""
    pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("ray")
    r = cli("sweep", str(write(root, TINY)), "--out", str(root / "out"), "--executor", "ray")
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    assert "local Ray cluster" in r.stdout and "finished in" in r.stdout
    return root / "out"


@pytest.mark.slow
def test_ray_sweep_writes_tables_and_a_report_linking_each_point(ray_sweep):
    findings, verdicts = sweep_tables(ray_sweep)
    assert list(findings.point.unique()) == ["fraction=0.5", "fraction=1.0"]
    assert set(findings.fraction) == {0.5, 1.0}
    assert {"measure", "mean", "ci_low", "ci_high", "n_seeds"} <= set(findings.columns)
    for point in ("fraction=0.5", "fraction=1.0"):  # the rows are the points' own findings
        own = pd.read_parquet(ray_sweep / "points" / point / "tables" / "findings.parquet")
        mine = findings[findings.point == point].reset_index(drop=True)
        pd.testing.assert_series_equal(mine["mean"], own["mean"], check_names=False)
    assert set(verdicts.finding) >= {"amplification", "localization", "neuroplasticity"}
    assert len(verdicts) == 2 * verdicts.finding.nunique()
    html = (ray_sweep / "report" / "index.html").read_text()
    assert "../points/fraction=0.5/report/index.html" in html and "Dose-response: fraction" in html
    assert html.count("<img") == 1 and "https://" not in html
    for point in ("fraction=0.5", "fraction=1.0"):
        assert (ray_sweep / "points" / point / "report" / "index.html").is_file()


@pytest.mark.slow
def test_local_sweep_killed_mid_point_loses_nothing_and_matches_ray(ray_sweep, tmp_path):
    spec = write(tmp_path, TINY)
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "circuit_plasticity",
        "sweep",
        str(spec),
        "--out",
        str(out),
        "--parallel",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    second = out / "points" / "fraction=1.0"
    deadline = time.time() + 600
    while not list(second.glob("seeds/seed-0/phases/poisoned/step-*")) and time.time() < deadline:
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its pool's workers
    proc.wait()
    first = out / "points" / "fraction=0.5"
    assert (first / "report" / "index.html").is_file() and not (second / "report" / "index.html").exists()
    finished = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}
    checkpoints = {p: p.stat().st_mtime_ns for p in second.rglob("*.safetensors")}
    assert checkpoints

    again = cli("sweep", str(spec), "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "fraction=0.5: finished before, skipped" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # the finished point untouched
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints  # resumed, not retrained

    # local (killed and resumed) and Ray (uninterrupted) give the same tables, to the bit
    for local, ray in zip(sweep_tables(out), sweep_tables(ray_sweep), strict=True):
        pd.testing.assert_frame_equal(local, ray, check_exact=True)

    other = write(tmp_path, TINY_BASE + "grid:\n  fraction: [0.25]\n", "other.yaml")
    refused = cli("sweep", str(other), "--out", str(out))
    assert refused.returncode == 2 and "holds a different sweep" in refused.stderr


def _dose_tables(edges: bool):
    """Hand-made sweep tables at two doses: the poison's edge change rises with the dose, the
    control's stays put, the node change moves less."""
    from circuit_plasticity.sweep.results import SweepTables

    values = {"score_clean": (2.0, 2.0), "localization_drop": (-1.0, -3.0)}
    if edges:
        values |= {
            "edges_poisoned_edge_change": (0.3, 0.6),
            "edges_poisoned_null_edge_change": (0.05, 0.06),
            "edges_poisoned_node_change": (0.1, 0.2),
            "edges_poisoned_null_node_change": (0.01, 0.02),
            "edges_poisoned_excess": (0.15, 0.36),
        }
    rows = [
        {"point": f"fraction={x}", "fraction": x, "measure": m, "mean": v[i], "ci_low": v[i] - 0.05}
        | {"ci_high": v[i] + 0.05, "n_seeds": 3, "interval": "t", "clipped": False}
        for m, v in values.items()
        for i, x in enumerate((0.5, 1.0))
    ]
    verdicts = [
        {"point": f"fraction={x}", "fraction": x, "finding": "localization", "verdict": "yes", "reason": ""}
        for x in (0.5, 1.0)
    ]
    return SweepTables(pd.DataFrame(rows), pd.DataFrame(verdicts))


def test_dose_response_draws_the_poisons_edge_and_node_change_beside_the_control(monkeypatch):
    from circuit_plasticity.sweep import report
    from circuit_plasticity.sweep.results import SweepTables

    drawn = []
    monkeypatch.setattr(report, "png_bytes", lambda fig: drawn.append(fig) or b"\x89PNG")
    assert report.EDGE_ROW not in report.panel_rows(_dose_tables(edges=False).findings)
    report.dose_response(_dose_tables(edges=False), "fraction", [], {})
    titles = {ax.get_title() for ax in drawn[-1].axes}
    assert not any(t.startswith("edges") for t in titles)  # a sweep without edge tracking: no row

    tables = _dose_tables(edges=True)
    report.dose_response(tables, "fraction", [], {})
    axes = {ax.get_title(): ax for ax in drawn[-1].axes}
    for measure in ("edge_change", "node_change"):
        ax = axes[f"edges poisoned {measure.replace('_', ' ')}"]
        bars = {c.get_label(): c for c in ax.containers}  # one errorbar per line: its data and interval
        assert set(bars) == {"poisoned", "control"}
        lines = {k: c.lines[0] for k, c in bars.items()}
        f = tables.findings
        for what, name in (
            ("poisoned", f"edges_poisoned_{measure}"),
            ("control", f"edges_poisoned_null_{measure}"),
        ):
            want = f[f.measure == name].sort_values("fraction")["mean"].tolist()
            assert list(lines[what].get_ydata()) == pytest.approx(want), (measure, what)
        assert lines["control"].get_linestyle() == "--"
        for what, c in bars.items():  # the 95 % interval: mean -+ 0.05 at each dose
            segments = c.lines[2][0].get_segments()
            assert [s[1][1] - s[0][1] for s in segments] == pytest.approx([0.1, 0.1]), what
    assert "edges poisoned excess" in axes
    two = SweepTables(  # another swept variable: a line per value, the control's in its colour
        pd.concat([tables.findings.assign(lr=lr) for lr in (1e-4, 1e-3)]),
        pd.concat([tables.verdicts.assign(lr=lr) for lr in (1e-4, 1e-3)]),
    )
    report.dose_response(two, "fraction", ["lr"], {})
    ax = {a.get_title(): a for a in drawn[-1].axes}["edges poisoned edge change"]
    assert {c.get_label() for c in ax.containers} == {
        f"lr={lr}, {what}" for lr in (1e-4, 1e-3) for what in ("poisoned", "control")
    }
