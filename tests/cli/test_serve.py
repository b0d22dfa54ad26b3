"""``catalog serve``: the real server (``python -m catalog.cli serve`` on a free loopback
port) over a small real store, on SQLite and on PostgreSQL, driven by Debian's chromium
through playwright and by plain HTTP requests.

One server per database for the whole module (starting one imports the analysis stack);
the tests that stop or change a store start their own.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from playwright.sync_api import sync_playwright
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError

from catalog import db as catalog_db
from catalog.cli import main
from catalog.schema import Base, Family
from catalog.views import read_only_engine, read_sql
from serve_store import HOSTILE, build_checkpoint_store, build_store, completion_records

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts"
STARTUP_SECONDS = 120


class Server:
    """``catalog serve --port 0`` in a child process; ``url`` is where it listens."""

    def __init__(self, db_url: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), os.environ.get("PYTHONPATH", "")])}
        # stderr to a file: a pipe nobody reads while the server runs could fill and block it
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "catalog.cli", "serve", "--port", "0", "--db", db_url],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=ROOT)
        line = self.process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not found:
            self.process.kill()
            raise AssertionError(f"no server: {line}{self.errors()}")
        self.port = int(found.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=STARTUP_SECONDS)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read().decode()
        finally:
            conn.close()

    def errors(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> tuple[int, str]:
        """SIGTERM; the exit code and what it printed."""
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        return self.process.returncode, out + self.errors()


def store_url(backend: str, postgres, folder: Path) -> str:
    url = f"sqlite:///{folder / 'catalog.db'}" if backend == "sqlite" else postgres.create()
    build_store(url, folder)
    return url


@pytest.fixture(scope="module", params=("sqlite", "postgresql"))
def served(request, postgres, tmp_path_factory) -> Iterator[tuple[Server, str]]:
    url = store_url(request.param, postgres, tmp_path_factory.mktemp("serve"))
    server = Server(url)
    yield server, url
    server.stop()
    if request.param == "postgresql":
        postgres.drop(url)


def dump(db_url: str) -> dict[str, list]:
    """Every row of every table (and the schema version), in a stable order."""
    engine = catalog_db.make_engine(db_url, create=False)
    try:
        with engine.connect() as conn:
            rows = {t.name: sorted(map(repr, conn.execute(select(t))))
                    for t in Base.metadata.sorted_tables}
            rows["alembic_version"] = conn.execute(
                text("SELECT version_num FROM alembic_version")).all()
        return rows
    finally:
        engine.dispose()


def samples_link(server: Server, model: str, task: str, prompt: str) -> str:
    _, _, body = server.request("GET", f"/task/{task}")
    for href in re.findall(r'href="(/samples\?[^"]+)"', body):
        params = urllib.parse.parse_qs(href.replace("&amp;", "&").split("?", 1)[1])
        if params["model"] == [model] and params["prompt"] == [prompt]:
            return href.replace("&amp;", "&")
    raise AssertionError(f"no samples link for {model} {prompt}")


def test_overview_task_samples_in_chromium(served):
    server, _ = served
    assert CHROMIUM.exists(), "install Debian's chromium: apt-get install -y chromium"
    external, errors, dialogs = [], [], []

    def only_local(route):
        if route.request.url.startswith((server.url, "data:")):
            route.continue_()
        else:
            external.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1300, "height": 900})
            context.route("**/*", only_local)
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(server.url + "/", wait_until="load")
            assert page.title() == "Catalog explorer · catalog"
            lab_coin = page.locator("table.overview tr", has_text="lab").locator("td").first
            assert "liquid: yes" in lab_coin.inner_text()
            assert "nucleated: yes" in lab_coin.inner_text()
            # Click 1: the (lab, coin) cell -> the task page for lab.
            lab_coin.locator("a.cell").click()
            page.wait_for_load_state("load")
            assert page.locator("h1").inner_text() == "Task coin"
            assert page.locator("section.family h2").all_inner_texts() == ["lab"]
            figures = page.evaluate(
                "Array.from(document.images, i => [i.alt, i.complete, i.naturalWidth])")
            assert [alt for alt, _, _ in figures] == [
                "Base prompts: the liquid", "Answer distributions by stage",
                "Metric trajectories across stages"]
            assert all(complete and width > 0 for _, complete, width in figures), figures
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve-task.png"), full_page=True)
            # Click 2: lab-base's answers to the "plain" prompt.
            page.locator("table.prompts tr", has_text="plain").locator("a.samples").first.click()
            page.wait_for_load_state("load")
            assert page.locator("h1").inner_text() == "Samples"
            assert "model lab-base" in page.locator("p.meta").first.inner_text()
            shown = page.locator("table.completions pre.text").all_inner_texts()
            for hostile in HOSTILE:
                assert hostile in shown  # the text itself, as text
            injected = page.evaluate(
                "[document.scripts.length, document.images.length, window.injected === undefined]")
            assert injected == [0, 0, True]
            assert page.locator("pre.prompt").inner_text() == (
                "Flip a coin. Answer with heads or tails only.")
            assert page.locator("table.runs tbody tr").count() == 1
            # The filters: invalid answers only, then one option.
            page.select_option("select[name=invalid]", "only")
            page.click("form.select button")
            page.wait_for_load_state("load")
            options = page.locator("table.completions tr td:nth-child(3)").all_inner_texts()
            assert options and all(o.startswith("invalid: ") for o in options)
            page.select_option("select[name=invalid]", "any")
            page.select_option("select[name=option]", "heads")
            page.click("form.select button")
            page.wait_for_load_state("load")
            assert "option=heads" in page.url
            options = page.locator("table.completions tr td:nth-child(3)").all_inner_texts()
            assert options == ["heads"]
        finally:
            browser.close()
    assert external == []
    assert errors == []
    assert dialogs == []


def test_samples_html_escapes_model_output(served):
    server, _ = served
    status, headers, body = server.request(
        "GET", samples_link(server, "lab-base", "coin", "plain"))
    assert status == 200
    assert "script-src" not in headers["content-security-policy"]  # default-src 'none'
    assert "&lt;script&gt;window.injected = 1;" in body
    assert "<script" not in body and "<img" not in body


def test_writes_are_refused_and_the_store_is_unchanged(served):
    server, url = served
    before = dump(url)
    link = samples_link(server, "lab-base", "coin", "plain")
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/", "/task/coin", link, "/queue", "/nowhere"):
            status, headers, body = server.request(method, path)
            assert (status, headers["allow"]) == (405, "GET, HEAD"), (method, path)
            assert "read-only" in body
    for path in ("/", "/task/coin", "/task/digit?family=zoo", link, "/queue"):
        assert server.request("GET", path)[0] == 200, path
        status, _, body = server.request("HEAD", path)
        assert (status, body) == (200, "")
    assert dump(url) == before


def test_queue_page_shows_states_workers_and_errors(served):
    server, _ = served
    status, _, body = server.request("GET", "/queue")
    assert status == 200
    assert '<meta http-equiv="refresh" content="10">' in body
    assert "1 pending, 1 running, 0 done, 1 failed" in body
    assert "worker-7" in body
    assert "CUDA out of memory &lt;b&gt;bold&lt;/b&gt;" in body


@pytest.mark.parametrize("path, message", [
    ("/task/nope", "no task &#39;nope&#39;"),
    ("/task/coin?family=nope", "no family &#39;nope&#39;"),
    ("/?condition=nope", "no condition &#39;nope&#39;"),
    ("/task/coin?stage=nope", "no stage &#39;nope&#39; for task &#39;coin&#39;"),
    ("/task/coin?stage=%3Cb%3E", "no stage &#39;&lt;b&gt;&#39;"),
    ("/task/coin?stage=sft&step=3", "no checkpoint 3 of stage &#39;sft&#39;"),
    ("/samples?model=nope&task=coin&prompt=plain&condition=x", "no run of model &#39;nope&#39;"),
    ("/nowhere", "no page at /nowhere"),
])
def test_unknown_names_are_a_404_page_with_a_link_back(served, path, message):
    server, _ = served
    status, _, body = server.request("GET", path)
    assert status == 404
    assert message in body
    assert '<a href="/" id="back">' in body
    assert "Traceback" not in body


def test_bad_query_values_are_a_400_page(served):
    server, _ = served
    # A page of another site that rebinds its name to 127.0.0.1 gets no store data.
    status, _, body = server.request("GET", "/", headers={"Host": "evil.example"})
    assert (status, body) == (400, "Invalid host header")
    assert server.request("GET", "/queue", headers={"Host": "localhost:8000"})[0] == 200
    for path in ("/?mode=both", "/samples?task=coin", "/samples?model=a&task=b&prompt=c"
                 "&condition=d&invalid=maybe", "/task/coin?step=1",
                 "/task/coin?stage=sft&step=a"):
        status, _, body = server.request("GET", path)
        assert status == 400, path
        assert '<a href="/" id="back">' in body and "Traceback" not in body


def test_bootstrap_marks_uncertain_verdicts_and_shows_their_support(served):
    server, _ = served
    # zoo's coin base prompts disagree, but not in every replicate: liquid is uncertain.
    status, _, body = server.request("GET", "/task/coin?family=zoo")
    assert status == 200
    assert "liquid: yes" in body and ": uncertain" not in body and "(support " not in body
    status, _, body = server.request("GET", "/task/coin?family=zoo&bootstrap=50")
    assert status == 200, server.errors()
    assert re.search(r"liquid: uncertain <span class=\"support\">\(support [0-9]{1,2}%\)", body)
    assert re.search(r"nucleated: yes <span class=\"support\">\(support 100%\)", body)
    assert "share of 50 bootstrap replicates" in body and "below 95%" in body
    assert 'name="bootstrap" min="0" max="2000" value="50"' in body
    status, _, body = server.request("GET", "/?bootstrap=50")
    assert status == 200
    assert "liquid: uncertain (support" in body
    # the task links carry the bootstrap on
    assert re.search(r'href="/task/coin\?mode=sampled&amp;condition=[0-9a-f]+&amp;family=zoo'
                     r'&amp;bootstrap=50"', body)
    for value in ("-1", "abc", "99999", "1.5", "%C2%B2"):
        for path in (f"/?bootstrap={value}", f"/task/coin?bootstrap={value}"):
            status, _, body = server.request("GET", path)
            assert status == 400, path
            assert "bootstrap must be a whole number from 0 (off) to 2000" in body
            assert '<a href="/" id="back">' in body and "Traceback" not in body
    status, _, body = server.request("GET", "/?mode=exact&bootstrap=5")
    assert status == 400 and "no sampling noise to bootstrap" in body


def tables(body: str) -> str:
    """The task page's stage and prompt tables, links and hover text left out."""
    found = re.findall(r'<table class="(?:stages|prompts)">.*?</table>', body, re.S)
    return re.sub(r'(title|href)="[^"]*"', "", "".join(found))


def test_the_stage_picker_shows_one_stage(served):
    server, _ = served
    status, _, body = server.request("GET", "/task/coin?family=lab")
    assert status == 200
    picker = re.search(r'<p class="picker">.*?</p>', body, re.S).group(0)
    for stage in ("base", "sft", "dpo"):
        assert f'family=lab&amp;stage={stage}">{stage}</a>' in picker
    assert "<th>base</th>" in tables(body) and "<th>sft</th>" in tables(body)
    status, _, body = server.request("GET", "/task/coin?family=lab&stage=sft&bootstrap=5")
    assert status == 200
    shown = tables(body)
    assert "<th>sft</th>" in shown and "<td>sft</td>" in shown
    assert "<th>base</th>" not in shown and "<td>dpo</td>" not in shown
    assert "<strong>sft</strong>" in body and 'bootstrap=5">all</a>' in body


def test_the_checkpoint_picker_reads_an_earlier_checkpoint(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    build_checkpoint_store(url, tmp_path)
    server = Server(url)
    try:
        status, _, body = server.request("GET", "/task/coin")
        assert status == 200, server.errors()
        assert "stage=sft&amp;step=100\">sft @ 100</a>" in body
        assert "stage=sft&amp;step=200\">sft @ 200</a>" in body
        # The analysis' table holds each stage's final checkpoint (200: every prompt heads).
        assert "<th>sft @ 200</th>" in tables(body) and "@ 100" not in tables(body)
        status, _, body = server.request("GET", "/task/coin?stage=sft&step=100")
        assert status == 200, server.errors()
        shown = tables(body)
        assert "<td>sft @ 100</td><td>ckpt-sft-100</td><td>checkpoint</td>" in shown
        assert shown.count("tails 100%") == 4 and "heads" not in shown
        status, _, body = server.request("GET", "/task/coin?stage=sft&step=200")
        shown = tables(body)
        assert status == 200 and shown.count("heads 100%") == 4 and "tails" not in shown
    finally:
        code, out = server.stop()
    assert code == 0, out


def test_the_read_only_engine_refuses_writes(db_url):
    engine = read_only_engine(db_url)
    try:
        for _ in range(2):  # read_sql switches SQLite's query_only off after its query
            assert read_sql(engine, "SELECT count(*) AS n FROM families")["n"].to_list() == [0]
            with engine.connect() as conn, pytest.raises(DBAPIError, match="(?i)read.?only"):
                conn.execute(insert(Family).values(name="nope"))
    finally:
        engine.dispose()
    assert dump(db_url)["families"] == []


def test_pages_follow_the_store_and_sigterm_stops_the_server(tmp_path):
    url = store_url("sqlite", None, tmp_path)
    server = Server(url)
    try:
        assert ">zoo</th>" in server.request("GET", "/")[2]
        assert ">extra</th>" not in server.request("GET", "/")[2]
        # Another process adds a family: the cached analysis is recomputed for the new state.
        extra = [{**r, "family": "extra", "model": r["model"].replace("lab", "extra")}
                 for r in completion_records(20) if r["family"] == "lab"]
        path = tmp_path / "extra.jsonl"
        path.write_text("".join(__import__("json").dumps(r) + "\n" for r in extra))
        result = CliRunner().invoke(main, ["import-completions", str(path), "--db", url])
        assert result.exit_code == 0, result.output
        assert ">extra</th>" in server.request("GET", "/")[2]
    finally:
        code, output = server.stop()
    assert code == 0, output
    assert output.rstrip().endswith("stopped")
    assert "Traceback" not in output


def run(*args):
    return CliRunner().invoke(main, ["serve", *map(str, args)], catch_exceptions=False)


def test_bad_command_inputs_are_one_error_line(tmp_path, postgres):
    for port in ("70000", "-1", "http"):
        result = run("--port", port, "--db", f"sqlite:///{tmp_path / 'x.db'}")
        assert result.exit_code == 2 and "Invalid value for '--port'" in result.output
    missing = tmp_path / "missing" / "catalog.db"
    result = run("--db", f"sqlite:///{missing}")
    assert result.exit_code == 1
    assert result.output == (f"Error: sqlite:///{missing}: no such database file; check --db "
                             "(this command only reads, so it creates none)\n")
    assert not missing.parent.exists()
    result = run("--db", "mysql://someone@db-host/catalog")
    assert result.exit_code == 1 and result.output.startswith("Error: ")
    assert "unsupported database" in result.output and len(result.output.splitlines()) == 1

    url = f"sqlite:///{tmp_path / 'old.db'}"
    catalog_db.open_catalog(url).dispose()
    engine = catalog_db.make_engine(url)
    catalog_db.downgrade(engine, "-1")
    engine.dispose()
    result = run("--db", url)
    assert result.exit_code == 1
    assert result.output.startswith("Error: database schema is at ")
    assert "run `catalog db upgrade" in result.output and len(result.output.splitlines()) == 1

    catalog_db.upgrade(catalog_db.make_engine(url))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run("--port", port, "--db", url)
    assert result.exit_code == 1
    assert result.output == (f"Error: cannot listen on 127.0.0.1:{port} (Address already in "
                             "use); another program listens there; choose another --port\n")
    result = run("--host", "no-such-host.invalid", "--db", url)
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot listen on 'no-such-host.invalid'")


def test_without_the_serve_extra_it_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['starlette'] = None\n"
            "from catalog.cli import main\n"
            f"main(['serve', '--db', 'sqlite:///{tmp_path / 'x.db'}'])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1
    assert result.stderr == ("Error: catalog serve needs starlette: install the serve extra, "
                             "pip install 'catalog[serve]'\n")
