"""`catalog report` (analysis/report.py, analysis/plots.py): built from a planted store on
SQLite and PostgreSQL, from ingested counts (sampled and exact), and from in-memory results;
the HTML is self-contained and every figure is a real PNG."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from analysis import plots
from analysis.crystallization import AnalysisOptions, analyze_data
from analysis.frames import counts_from_frame
from analysis.report import _unique_slugs, build_report, write_report
from catalog.cli import main
from catalog.db import open_catalog, session_scope
from catalog.errors import NotFound
from catalog.imports import import_counts
from catalog.registry import add_model
from catalog.tasks import bundled_task
from catalog.toylab.synthetic import planted_counts
from ingest.backends import SamplingParams
from ingest.jobs import IngestRequest, run_ingest

SEEDS = {("olmo", "pick_digit"): 3, ("olmo", "pick color"): 1,
         ("tulu", "pick_digit"): 5, ("tulu", "pick color"): 4}
TASK_FIGURES = ("base-prompts", "stage-distributions", "trajectories", "cross-family")
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def planted(families=("olmo", "tulu"), tasks=("pick_digit", "pick color"), **overrides):
    fields = dict(families=families, tasks=tasks, stages=("base", "sft", "dpo"), n_prompts=6,
                  n_options=6, n_samples=200,
                  seed_prompts={k: v for k, v in SEEDS.items() if k[0] in families and k[1] in tasks},
                  random_seed=7)
    fields.update(overrides)
    frame, _ = planted_counts(**fields)
    return frame


@pytest.fixture
def stored(db_url, tmp_path):
    path = tmp_path / "counts.csv"
    planted().drop("prompt_id").write_csv(path)
    engine = open_catalog(db_url)
    import_counts(engine, path)
    engine.dispose()
    return db_url


def report(*args):
    return CliRunner().invoke(main, ["report", *args])


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def assert_png(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decodes every pixel: a truncated file fails here
        assert image.width > 100 and image.height > 100
        return image.size


def test_report_from_a_planted_store(stored, tmp_path):
    output = tmp_path / "out"
    result = report("--db", stored, "--output", str(output), "--bootstrap", "20", "--seed", "3")
    assert result.exit_code == 0, result.output
    html_path = output / "report.html"
    assert str(html_path) in result.output
    assert "10 figures (2 tasks, 2 families)" in result.output
    html = html_path.read_text(encoding="utf-8")

    # One section per task with a table-of-contents link, and the verdict table.
    for task, slug in (("pick_digit", "pick-digit"), ("pick color", "pick-color")):
        assert f'<section id="task-{slug}">' in html
        assert f'<a href="#task-{slug}">{task}</a>' in html
    assert '<table class="verdicts">' in html
    verdict_rows = re.findall(r"<tr>\s*<td>(olmo|tulu)</td>\s*<td><a href=\"#task-[^\"]+\">([^<]+)</a>", html)
    assert sorted(verdict_rows) == sorted((f, t) for f, t in SEEDS)
    for (family, task), prompt_id in SEEDS.items():
        assert f"<td>p{prompt_id:03d}</td>" in html  # the planted seed is shown
    assert html.count('<td class="yes">yes</td>') >= 8  # liquid and nucleated, 4 groups
    assert "<td>bootstrap</td><td class=\"num\">20</td>" in html
    assert "<td>tau</td><td class=\"num\">0.9</td>" in html

    # Self-contained: no scripts, nothing fetched from a network, every image embedded.
    assert "<script" not in html.lower()
    assert not EXTERNAL.search(html)
    assert "<link" not in html.lower() and "url(" not in html and "@import" not in html
    figures = sorted((output / "figures").glob("*.png"))
    expected = {f"{slug}-{kind}.png" for slug in ("pick-digit", "pick-color") for kind in TASK_FIGURES}
    expected |= {"all-tasks-trajectories.png", "all-tasks-cross-family.png"}
    assert {f.name for f in figures} == expected
    embedded = embedded_pngs(html)
    assert len(embedded) == len(figures) == html.count("<img ")
    assert sorted(embedded) == sorted(f.read_bytes() for f in figures)
    for figure in figures:
        assert_png(figure.read_bytes())


def test_the_report_is_reproducible(stored, tmp_path, monkeypatch):
    """Same store and options, same bytes: figures can be committed and diffed."""
    monkeypatch.chdir(tmp_path)
    selection = ("--db", stored, "--task", "pick_digit", "--family", "olmo")
    first, second = tmp_path / "catalog-report", tmp_path / "again"
    assert report(*selection).exit_code == 0  # the default directory: catalog-report/
    result = report(*selection, "--output", str(second))
    assert result.exit_code == 0, result.output
    assert (first / "report.html").read_bytes() == (second / "report.html").read_bytes()
    names = sorted(p.name for p in (first / "figures").iterdir())
    assert names == ["all-tasks-trajectories.png", "pick-digit-base-prompts.png",
                     "pick-digit-stage-distributions.png", "pick-digit-trajectories.png"]
    for name in names:
        assert (first / "figures" / name).read_bytes() == (second / "figures" / name).read_bytes()
    html = (first / "report.html").read_text()
    assert "Cross-family seed prediction needs at least two families" in html
    assert "tulu" not in html and "pick color" not in html


def test_thresholds_given_to_the_report_are_used_and_shown(stored, tmp_path):
    output = tmp_path / "strict"
    result = report("--db", stored, "--output", str(output), "--liquid-threshold", "5",
                    "--task", "pick_digit")
    assert result.exit_code == 0, result.output
    html = (output / "report.html").read_text(encoding="utf-8")
    assert '<tr><td>liquid</td><td class="num">5.0</td>' in html
    # JSD is at most 1 bit, so no family is liquid at base under this threshold.
    assert html.count('<td class="no">no</td>') >= 2


def test_an_empty_store_is_a_clear_error(db_url, tmp_path):
    result = report("--db", db_url, "--output", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert result.output.startswith("Error: the store has no done sampled runs")
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_empty_selection_is_a_clear_error(stored, tmp_path):
    result = report("--db", stored, "--family", "nobody", "--output", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "Error: no done sampled runs for family nobody" in result.output
    result = report("--db", stored, "--mode", "exact", "--output", str(tmp_path / "out"))
    assert result.exit_code == 1 and result.output.startswith("Error: ")
    result = report("--db", stored, "--mode", "exact", "--bootstrap", "5")
    assert result.exit_code == 1 and "exact probabilities have no sampling noise" in result.output


# ----- ingested counts (the job layer with the data-only "table" backend) ------------------


def test_report_from_ingested_counts_sampled_and_exact(engine, tmp_path):
    digit = bundled_task("digit")
    text = {p.key: p.text for p in digit.prompts}
    base = {"prompts": {text["plain"]: {"7": 0.8, "3": 0.2}, text["terse"]: {"2": 0.6, "5": 0.4},
                        text["polite"]: {"1": 0.5, "9": 0.5}, text["only"]: {"4": 1.0}}}
    sft = {"default": {"7": 0.85, "3": 0.1, "banana": 0.05}}
    for stage, table in (("base", base), ("sft", sft)):
        path = tmp_path / f"{stage}.json"
        path.write_text(json.dumps(table))
        with session_scope(engine) as session:
            add_model(session, name=f"toy-{stage}", family="toy", stage=stage, source=str(path),
                      backend="table")
    for mode in ("sampled", "exact"):
        run_ingest(engine, IngestRequest(
            families=["toy"], tasks=["digit"], prompts=["plain", "terse", "polite", "only"],
            params=SamplingParams(n=300, max_new_tokens=4), seed=1, mode=mode,
        ))
    for mode in ("sampled", "exact"):
        summary = build_report(engine, tmp_path / mode, mode=mode)
        assert summary.tasks == ["digit"] and summary.families == ["toy"]
        html = summary.path.read_text()
        assert f"{mode} counts" in html
        assert "<td>plain</td>" in html  # the seed: plain is closest to the SFT distribution
        assert [p.name for p in summary.figures] == [
            "all-tasks-trajectories.png", "digit-base-prompts.png",
            "digit-stage-distributions.png", "digit-trajectories.png",
        ]
        for figure in summary.figures:
            assert_png(figure.read_bytes())


# ----- in memory: shapes of data the figures must cope with --------------------------------


def test_open_task_with_many_options_lumps_the_rest():
    frame = planted(families=("olmo",), tasks=("pick_digit",), n_options=45)
    result = analyze_data(counts_from_frame(frame))
    group = result.groups[0]
    with plots.style():
        figure = plots.base_prompts_figure([group], plots.family_colors(["olmo"]))
    image = figure.axes[0].images[0].get_array()
    assert image.shape == (6, plots.MAX_OPTIONS)
    labels = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert labels[-1] == plots.OTHER and len(labels) == plots.MAX_OPTIONS
    # Lumping keeps each row a distribution.
    np.testing.assert_allclose(np.asarray(image).sum(axis=1), 1.0)


def test_missing_stages_and_a_family_without_sft_still_report(tmp_path):
    frame = planted(tasks=("pick_digit",))
    frame = frame.filter(~((frame["family"] == "tulu") & (frame["stage"] != "base")))
    result = analyze_data(counts_from_frame(frame), AnalysisOptions(bootstrap=10))
    assert {g.family: g.status for g in result.groups} == {"olmo": "ok", "tulu": "missing_stage"}
    summary = write_report(result, tmp_path)
    html = summary.path.read_text()
    assert "no SFT stage" in html  # the analysis' problem is shown in the task's section
    assert "missing_stage" in html and "undefined" in html
    for figure in summary.figures:
        assert_png(figure.read_bytes())


def test_task_names_become_distinct_file_names():
    slugs = _unique_slugs(["a b", "a-b", "All Tasks", "Prénom", "名字"], reserved={"all-tasks"})
    assert slugs == {"a b": "a-b", "a-b": "a-b-2", "All Tasks": "all-tasks-2",
                     "Prénom": "prenom", "名字": "task"}


def test_nothing_to_plot_is_a_clear_error(tmp_path):
    result = analyze_data(counts_from_frame(planted(families=("olmo",), tasks=("pick_digit",))))
    result.groups.clear()
    with pytest.raises(NotFound, match="nothing to plot"):
        write_report(result, tmp_path / "out")
    assert not Path(tmp_path / "out").exists()


def test_matplotlib_is_imported_only_to_draw():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from catalog.cli import main\n"
        "import analysis.report\n"
        "assert CliRunner().invoke(main, ['report', '--help']).exit_code == 0\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported before drawing'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
