"""The report as a person reads it, in a real browser: headless Chromium (Debian's package;
.ci/run installs it) opens the report of a small whole study at 1400 and 800 px and checks
that every image loads, nothing is logged as an error, every section is there, no figure is
empty without saying why, nothing sticks out of the page, and the verdicts with their reasons
fill the first screen."""

from __future__ import annotations

import os
import textwrap

import pytest

from circuit_plasticity.report.browser import Chromium, check_page, find_chromium

SPEC = textwrap.dedent("""\
    seeds: [0, 1]
    n_train: 96
    clean_epochs: 1
    poison_epochs: 2
    retrain_epochs: 2
    eval_every_steps: 3
    analysis: {n: 40, n_random: 20}
    """)
SECTIONS = ["verdicts", "criteria", "evidence", "numbers", "scores", "provenance", "tables"]
FIRST_SCREEN = 1000  # px: the window height a reader sees before scrolling


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium: .ci/run installs it (apt-get install chromium)")
        pytest.skip("no Chromium here (apt-get install chromium)")
    with Chromium() as b:
        yield b


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from circuit_plasticity.api import run_study
    from circuit_plasticity.spec import from_mapping, load_yaml
    from circuit_plasticity.study.experiment import ExperimentSpec

    root = tmp_path_factory.mktemp("browser")
    (root / "spec.yaml").write_text(SPEC)
    spec = from_mapping(ExperimentSpec, load_yaml(root / "spec.yaml"), source="spec.yaml")
    return run_study(spec, root / "run", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("width", [1400, 800])
def test_report_renders_whole_in_chromium(browser, report, width):
    html = report.read_text()
    seen = check_page(browser, report, width, FIRST_SCREEN)
    assert seen.images == html.count("<img ") and seen.images >= 8
    assert seen.broken_images == []
    assert seen.console_errors == []
    assert [s for s in SECTIONS if s not in seen.sections] == []
    figures = [s for s in seen.sections if s.startswith("figure-")]
    assert len(figures) >= 10 and seen.empty_figures == []
    assert seen.overflowing == [] and seen.page_width <= width
    verdicts = ["amplification", "localization", "neuroplasticity", "targeted-repair"]
    assert sorted(seen.first_screen) == sorted(f"verdict-{v}" for v in verdicts)
    if width == 1400:  # a reader sees every verdict and its reason without scrolling
        assert max(seen.first_screen.values()) <= FIRST_SCREEN, seen.first_screen


@pytest.mark.slow
def test_a_page_that_overflows_or_fails_is_caught(browser, tmp_path):
    """The checks can fail: a too-wide table, a broken image and a script error are all seen."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!doctype html><html><body><section id='verdicts'><table style='width:2000px'><tr><td>x"
        "</td></tr></table></section><img alt='gone' src='missing.png'>"
        "<script>console.error('boom'); undefined_function();</script></body></html>"
    )
    seen = check_page(browser, page, 800)
    assert seen.page_width > 800 and any(o.startswith("table") for o in seen.overflowing)
    assert seen.broken_images == ["gone"]
    assert any("boom" in e for e in seen.console_errors) and len(seen.console_errors) >= 2
