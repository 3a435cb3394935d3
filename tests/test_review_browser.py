"""The review app in a real browser (Debian's headless Chromium through Selenium) over two small real
runs of the shipped digits model on local Ray: DOODL and the unguided sampler on the same ids and seeds.
Gallery filters, sort and detail view; blind A/B votes cast with the keyboard, kept across a reload and
a server restart; the report's win rates equal the votes cast; a prompt with a script shown as text.

Screenshots of the gallery and the A/B page land in the test's folder, and also in $REVIEW_SCREENSHOTS
when it is set (that is how docs/review-*.png are made)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import threading
import urllib.request
from contextlib import redirect_stdout
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from doodl_ray.cli import main
from doodl_ray.jobs import load_spec, run_job
from doodl_ray.jobs.export import export_run
from doodl_ray.jobs.storage import Storage
from doodl_ray.review.app import create_app, make_review_server
from doodl_ray.review.results import RunResults
from doodl_ray.review.votes import VoteStore, winner
from tests.ray_session import ray_session  # noqa: F401
from tests.s3_server import s3_endpoint  # noqa: F401

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[1]
SCRIPT_PROMPT = 'a <script>window.pwned = 1</script> digit <img src=x onerror="window.pwned = 2">'
TARGETS = [0, 1, 2, 3, 4, 5, 6, 7, 8]


@pytest.fixture(scope="module")
def demo_runs(ray_session, tmp_path_factory) -> tuple[str, str]:
    """Two real runs of the demo spec at tiny settings over the same 10 rows (one rejected: target 12),
    with prompts and a category column in the input: DOODL (2 iterations) and the unguided sampler."""
    root = tmp_path_factory.mktemp("review-runs")
    ids = [f"digit-{t}" for t in TARGETS] + ["bad-target"]
    prompts = [SCRIPT_PROMPT if t == 3 else f"a handwritten {t}" for t in TARGETS] + ["twelve"]
    pq.write_table(pa.table({
        "id": ids, "target": TARGETS + [12], "seed": list(range(10)), "prompt": prompts,
        "category": ["even" if t % 2 == 0 else "odd" for t in TARGETS] + ["odd"], "note": ["extra column"] * 10,
    }), root / "input.parquet")
    uris = []
    for method in ("doodl", "none"):
        spec = load_spec(ROOT / "jobs/digits-demo.yaml", [
            f"method.name={method}", f"run_id=review-{method}", f"input.uri={root / 'input.parquet'}",
            "input.columns.prompt=prompt", f"output.uri={root / method}", "method.sampler.steps=10",
            "method.doodl.iterations=2", "guidance.crops.count=1", "resources.actors=1", "resources.batch_size=10",
            "resources.gpus_per_actor=1", "output.shard_size=5", f"model={ROOT / 'doodl_ray/assets/digits/balanced'}",
            f"guidance.model={ROOT / 'doodl_ray/assets/digits/guide.pt'}",
            f"evaluation.model={ROOT / 'doodl_ray/assets/digits/judge.pt'}",
        ])
        summary = run_job(spec, progress=False)
        assert (summary.ok, summary.rejected) == (9, 1)
        uris.append(str(root / method))
    return uris[0], uris[1]


class LiveServer:
    def __init__(self, app):
        self.httpd = make_review_server(app, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def live(demo_runs, tmp_path) -> Iterator:
    """Starts review servers over the demo runs (votes in this test's folder); stops them after."""
    servers: list[LiveServer] = []
    votes = str(tmp_path / "votes")

    def start(against: bool = True) -> LiveServer:
        a, b = (RunResults(uri) for uri in demo_runs)
        servers.append(LiveServer(create_app(a, VoteStore(votes), against=b if against else None)))
        return servers[-1]

    start.votes = votes
    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="review-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1360,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)  # no Selenium Manager
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, condition, timeout: float = 15):
    """Until condition(driver) is true; a page reloading under it (stale elements) just means not yet."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, ignored_exceptions=(WebDriverException,)).until(condition)


def progress(driver) -> str | None:
    """The A/B page's progress text, read in one step (the page reloads after each vote)."""
    return driver.execute_script("const e = document.getElementById('progress'); return e && e.textContent")


def css(driver, selector: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def images_loaded(driver, selector: str = "img") -> bool:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].every(i => i.complete && i.naturalWidth > 0)", selector)


def screenshot(driver, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    if os.environ.get("REVIEW_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["REVIEW_SCREENSHOTS"]) / name)


def test_gallery_filter_sort_and_detail(browser, live, demo_runs, tmp_path):
    from selenium.webdriver.support.ui import Select

    server = live()
    run = RunResults(demo_runs[0])
    browser.get(server.url + "/")
    assert len(css(browser, ".card")) == 10 and "10 of 10 rows" in css(browser, "#summary")[0].text
    wait_for(browser, lambda d: images_loaded(d, ".card img"))

    # filter: status ok, sorted by the judge's score, best first
    Select(css(browser, "#f-status")[0]).select_by_value("ok")
    Select(css(browser, "#f-sort")[0]).select_by_value("score:eval/classifier")
    Select(css(browser, "#f-order")[0]).select_by_value("desc")
    css(browser, "#f-apply")[0].click()
    wait_for(browser, lambda d: "status=ok" in d.current_url)
    cards = css(browser, ".card")
    assert len(cards) == 9 and {c.get_attribute("data-status") for c in cards} == {"ok"}
    expected = sorted(((r["score:eval/classifier"], r["id"]) for r in run.table.to_pylist() if r["status"] == "ok"),
                      reverse=True)
    assert [c.get_attribute("data-id") for c in cards] == [i for _, i in expected]
    wait_for(browser, lambda d: images_loaded(d, ".card img"))
    screenshot(browser, tmp_path, "review-gallery.png")

    # a score range and a target
    middle = expected[4][0]
    Select(css(browser, "#f-by")[0]).select_by_value("score:eval/classifier")
    css(browser, "#f-min")[0].send_keys(repr(middle))
    css(browser, "#f-apply")[0].click()
    wait_for(browser, lambda d: "min=" in d.current_url)
    assert [c.get_attribute("data-id") for c in css(browser, ".card")] == [i for _, i in expected[:5]]
    browser.get(server.url + "/?target=7")
    assert [c.get_attribute("data-id") for c in css(browser, ".card")] == ["digit-7"]

    # the rejected row shows its reason
    browser.get(server.url + "/?status=rejected")
    (card,) = css(browser, ".card")
    assert card.get_attribute("data-id") == "bad-target" and "outside the classifier" in card.text

    # detail view: result beside the unguided sample, the loss history, scores before and after
    browser.get(server.url + "/?status=ok&sort=final_loss")
    first = css(browser, ".card")[0]
    item_id = first.get_attribute("data-id")
    css(first, "a.id")[0].click()
    wait_for(browser, lambda d: "/item" in d.current_url)
    assert item_id in css(browser, "#item-id")[0].text
    wait_for(browser, lambda d: images_loaded(d, ".images img"))
    row = run.row(item_id)
    if run.has_image(item_id, "initial_image"):
        assert browser.execute_script("return document.querySelector('#initial img').naturalWidth") == 16
    else:
        assert "not recorded" in css(browser, "#initial")[0].text
    assert browser.execute_script("return document.querySelector('#result img').naturalWidth") == 16
    points = css(browser, "#loss-plot polyline")[0].get_attribute("points").split()
    assert len(points) == len(row["history"]) == 3  # the sample and 2 iterations
    scores = css(browser, "#scores")[0].text
    assert "eval/classifier" in scores and "guide loss" in scores


def test_webdataset_and_parquet_runs_show_their_images(browser, demo_runs, tmp_path):
    """The demo runs as a webdataset run and a parquet run: every ok card of the gallery, the detail view and
    the A/B page show the images from inside their containers, the same bytes as the files run's."""
    packed = {"a": str(tmp_path / "doodl-wds"), "b": str(tmp_path / "none-parquet")}
    export_run(Storage(demo_runs[0]), Storage(packed["a"]), "webdataset")
    export_run(Storage(demo_runs[1]), Storage(packed["b"]), "parquet")
    a, b = RunResults(packed["a"]), RunResults(packed["b"])
    loose = {"a": RunResults(demo_runs[0]), "b": RunResults(demo_runs[1])}
    server = LiveServer(create_app(a, VoteStore(str(tmp_path / "votes")), against=b))
    try:
        for key in ("a", "b"):
            browser.get(f"{server.url}/?status=ok&run={key}")
            assert len(css(browser, ".card img")) == 9 and "no image" not in browser.page_source
            wait_for(browser, lambda d: images_loaded(d, ".card img"))
            src = css(browser, ".card img")[0].get_attribute("src")
            item_id = css(browser, ".card")[0].get_attribute("data-id")
            with urllib.request.urlopen(src) as response:
                assert response.read() == loose[key].image(item_id).data
        browser.get(f"{server.url}/item?id=digit-4")
        wait_for(browser, lambda d: images_loaded(d, ".images img"))
        assert browser.execute_script("return document.querySelector('#initial img').naturalWidth") == 16
        assert browser.execute_script("return document.querySelector('#result img').naturalWidth") == 16
        browser.get(f"{server.url}/ab?reviewer=carol")
        wait_for(browser, lambda d: images_loaded(d, ".pair img"))
        assert len(css(browser, ".pair img")) == 2 and progress(browser) == "0 of 9"
    finally:
        server.close()


def test_script_in_a_prompt_is_shown_as_text(browser, live):
    server = live()
    for path in ("/?target=3", "/item?id=digit-3", "/item?id=digit-3&run=b"):
        browser.get(server.url + path)
        text = css(browser, "#prompt")[0].text if "/item" in path else css(browser, ".card .prompt")[0].text
        assert text == SCRIPT_PROMPT
        assert browser.execute_script("return window.pwned") is None
        assert "&lt;script&gt;window.pwned" in browser.page_source


def test_blind_votes_with_keys_resume_and_report(browser, live, demo_runs, tmp_path):
    from selenium.webdriver.common.keys import Keys

    server = live()
    a, b = (RunResults(uri) for uri in demo_runs)
    run_of_image = {a.image(p).data: "a" for p in ("digit-%d" % t for t in TARGETS)}
    run_of_image.update({b.image(p).data: "b" for p in ("digit-%d" % t for t in TARGETS)})
    assert len(run_of_image) == 18  # every DOODL image differs from its unguided twin

    def shown_left() -> str:
        src = css(browser, "#left")[0].get_attribute("src")
        with urllib.request.urlopen(src) as response:  # the bytes the reviewer saw
            return run_of_image[response.read()]

    def cast(reviewer: str, keys: list[str]) -> list[dict]:
        cast_votes = []
        for key in keys:
            wait_for(browser, lambda d: images_loaded(d, ".pair img"))
            pair = css(browser, "#pair")[0].get_attribute("data-pair")
            done = int(css(browser, "#progress")[0].text.split()[0])
            choice = {Keys.ARROW_LEFT: "left", Keys.ARROW_RIGHT: "right", "t": "tie", "s": "skip"}[key]
            cast_votes.append({"reviewer": reviewer, "pair_id": pair, "left": shown_left(), "choice": choice})
            css(browser, "body")[0].send_keys(key)
            wait_for(browser, lambda d: progress(d) == f"{done + 1} of 9")
        return cast_votes

    browser.get(server.url + "/ab")
    css(browser, "#reviewer")[0].send_keys("alice", Keys.ENTER)
    wait_for(browser, lambda d: progress(d) == "0 of 9")
    assert css(browser, "#question")[0].text == "Which image better matches the prompt?"
    screenshot(browser, tmp_path, "review-ab.png")
    keys = [Keys.ARROW_LEFT, Keys.ARROW_RIGHT, "t", Keys.ARROW_LEFT, "s", Keys.ARROW_RIGHT, Keys.ARROW_LEFT]
    votes = cast("alice", keys)
    browser.refresh()  # progress is kept and a voted pair never comes back
    assert css(browser, "#progress")[0].text == "7 of 9"
    assert css(browser, "#pair")[0].get_attribute("data-pair") not in {v["pair_id"] for v in votes}

    restarted = live()  # a new server over the same votes
    browser.get(restarted.url + "/ab?reviewer=alice")
    assert css(browser, "#progress")[0].text == "7 of 9"
    votes += cast("alice", [Keys.ARROW_LEFT, "t"])
    assert "All 9 pairs voted" in css(browser, "#finished")[0].text
    browser.get(restarted.url + "/ab?reviewer=bob")
    votes += cast("bob", [Keys.ARROW_RIGHT, Keys.ARROW_LEFT, Keys.ARROW_RIGHT, "s"])

    outcomes = [winner(v) for v in votes]
    expected = {"a": outcomes.count("a"), "b": outcomes.count("b"), "ties": outcomes.count("tie"),
                "skips": outcomes.count(None)}
    browser.get(restarted.url + "/report")
    overall = css(browser, 'tr[data-group="overall"]')[0]
    shown = {k: int(css(overall, f".{c}")[0].text) for k, c in
             (("a", "wins-a"), ("b", "wins-b"), ("ties", "ties"), ("skips", "skips"))}
    assert shown == expected
    decisive = expected["a"] + expected["b"]
    assert css(overall, ".rate-a")[0].text.startswith(f"{expected['a'] / decisive:.2f} [")

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["review-report", live.votes, "--json"]) == 0
    (study,) = json.loads(out.getvalue())["studies"]
    assert (study["run_a"], study["run_b"], study["reviewers"]) == ("review-doodl", "review-none", ["alice", "bob"])
    assert study["overall"]["a"]["wins"] == expected["a"] and study["overall"]["b"]["wins"] == expected["b"]
    assert study["overall"]["a"]["win_rate"] == pytest.approx(expected["a"] / decisive)
    assert set(study["by_category"]) == {"even", "odd"} and len(study["by_target"]) == 9
    assert study["agreement"] and study["agreement"][0]["reviewers"] == ["alice", "bob"]
