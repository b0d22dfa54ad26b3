"""The report in a real headless browser (Debian's chromium driven by playwright), offline.

Every request that is not for a local file is aborted and recorded; the page must load with
no console errors and no such requests, every image must decode, and every table-of-contents
link must point at a section. A full-page screenshot is saved under test-artifacts/.
Needs ``apt-get install chromium`` (never ``playwright install``, which downloads browsers).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from analysis.crystallization import AnalysisOptions, analyze_data
from analysis.frames import counts_from_frame
from analysis.report import write_report
from catalog.toylab.synthetic import planted_counts

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def report_path(tmp_path_factory) -> Path:
    frame, _ = planted_counts(families=("olmo", "tulu"), tasks=("digit", "coin"), n_prompts=6,
                              n_options=6, n_samples=200, random_seed=11)
    result = analyze_data(counts_from_frame(frame), AnalysisOptions(bootstrap=10, seed=1))
    return write_report(result, tmp_path_factory.mktemp("report")).path


def test_report_loads_offline_in_chromium(report_path):
    assert CHROMIUM.exists(), "install Debian's chromium: apt-get install -y chromium"
    external: list[str] = []
    errors: list[str] = []

    def only_local(route):
        url = route.request.url
        if url.startswith(("file:", "data:")):
            route.continue_()
        else:
            external.append(url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.route("**/*", only_local)
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
            page.goto(report_path.as_uri(), wait_until="load")

            images = page.evaluate(
                "Array.from(document.images, i => [i.alt, i.complete, i.naturalWidth])"
            )
            broken_links = page.evaluate(
                """Array.from(document.querySelectorAll('a[href^="#"]'))
                     .map(a => a.getAttribute('href').slice(1))
                     .filter(id => !document.getElementById(id))"""
            )
            sections = page.evaluate("Array.from(document.querySelectorAll('section'), s => s.id)")
            title = page.title()
            ARTIFACTS.mkdir(exist_ok=True)
            screenshot = ARTIFACTS / "report-full-page.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()

    print(f"screenshot: {screenshot}")
    assert title == "Crystallization report"
    assert external == []
    assert errors == []
    assert len(images) == 10  # 2 all-task figures + 4 per task
    assert all(complete and width > 0 for _, complete, width in images), images
    assert broken_links == []
    assert sections == ["summary", "all-tasks", "task-coin", "task-digit"]
    assert screenshot.stat().st_size > 10_000
