"""Review app without a browser: reading runs (best row per id, categories from the input, images only
through recorded keys), the gallery query on 100,000 rows, votes from concurrent reviewers through the
real HTTP server onto a real S3 endpoint, malformed votes, the token, the bind check, and the report's
statistics. Runs are written the way the job system writes them (its ledger's Parquet, its layout)."""

from __future__ import annotations

import datetime as dt
import http.client
import io
import json
import logging
import math
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score

from doodl_ray.cli import main
from doodl_ray.errors import InvalidInput
from doodl_ray.jobs.storage import Storage
from doodl_ray.jobs.rows import to_parquet
from doodl_ray.review.app import create_app, make_review_server
from doodl_ray.review.gallery import GalleryQuery, gallery_page
from doodl_ray.review.report import build_report
from doodl_ray.review.results import RunResults
from doodl_ray.review.votes import VoteStore
from tests.s3_server import s3_endpoint  # noqa: F401

IDS = ["plain", "with space", "a/b/c", "ünï-çødé ☃", "../../etc/passwd-lookalike"]


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (4, 4), value).save(buffer, format="PNG")
    return buffer.getvalue()


def write_run(uri: str, rows: list[dict[str, Any]], run_id: str, options: dict | None = None,
              input_file: str | None = None, parts: list[list[dict[str, Any]]] = ()) -> Storage:
    """A run as the job system lays it out: manifest, one finished shard, optionally open parts."""
    storage = Storage(uri, options)
    manifest = {"run_id": run_id, "state": "finished",
                "spec": {"output": {"uri": uri}, "input": {"uri": input_file, "columns": {"id": "id"}}},
                "input_files": [input_file] if input_file else []}
    storage.write_bytes("manifest.json", json.dumps(manifest).encode())
    storage.write_bytes("results/shard-00000.parquet", to_parquet(rows))
    storage.write_bytes("results/shard-00000.done.json", b"{}")
    for n, part in enumerate(parts):
        storage.write_bytes(f"results/parts/shard-00001/p{n}.parquet", to_parquet(part))
    return storage


def result_row(uri: str, index: int, item_id: str, *, status: str = "ok", score: float = 0.5, image: bool = True,
               **fields: Any) -> dict[str, Any]:
    row = {"id": item_id, "shard": 0, "status": status, "target": str(index % 3), "prompt": f"prompt {index}",
           "seed": index, "method": "doodl", "initial_loss": 2.0 + index, "final_loss": 1.0 / (index + 1),
           "best_iteration": index % 4, "history": [2.0 + index, 1.5, 1.0 / (index + 1)],
           "scores": {"guide/classifier": score, "eval/classifier": score / 2, "eval_initial/classifier": score / 4},
           "image_uri": f"{uri}/images/img-{index}.png" if image and status == "ok" else None,
           "finished_at": dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)}
    if status != "ok":
        row.update(scores=None, history=None, error_type="NonFiniteLoss", error=f"loss became NaN at {index}")
    return {**row, **fields}


class Server:
    """The review app on a real threaded HTTP server on loopback."""

    def __init__(self, app):
        self.httpd = make_review_server(app, "127.0.0.1", 0)
        self.port = self.httpd.server_port
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json"} if body is not None and not isinstance(body, bytes) else {}
        conn.request(method, path, body=data, headers={**hdrs, **(headers or {})})
        response = conn.getresponse()
        result = response.status, dict(response.getheaders()), response.read()
        conn.close()
        return result

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator:
    servers: list[Server] = []

    def start(app) -> Server:
        servers.append(Server(app))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def ab_runs(root: str, n: int, options: dict | None = None, images: bool = True) -> tuple[RunResults, RunResults]:
    """Two runs over the same n ids, on disk or S3 (images written unless told not to: votes need none)."""
    runs = []
    for name in ("doodl", "none"):
        uri = f"{root}/{name}"
        storage = write_run(uri, [result_row(uri, i, f"pair {i}") for i in range(n)], f"digits-{name}", options)
        for i in range(n if images else 0):
            storage.write_bytes(f"images/img-{i}.png", png(i % 256))
        runs.append(RunResults(uri, options))
    return runs[0], runs[1]


# ---- reading a run ------------------------------------------------------------------------------------


def test_run_rows_categories_and_image_keys(tmp_path: Path):
    uri = str(tmp_path / "run")
    input_file = str(tmp_path / "input.parquet")
    pq.write_table(pa.table({"id": IDS + ["open-1", "open-2"], "category": ["Colors", "Text", "Colors", "Text",
                                                                         "Counting", "Text", "Text"],
                             "unrelated": list(range(7))}), input_file)
    rows = [result_row(uri, i, item_id) for i, item_id in enumerate(IDS[:4])]
    rows.append(result_row(uri, 4, IDS[4], status="rejected", image=False))
    rows[1]["image_uri"] = "/etc/passwd"  # a tampered row: outside the run
    rows[2]["image_uri"] = f"{uri}/images/../manifest.png"
    rows[3]["image_uri"] = f"{uri}/manifest.json"  # inside the run but not an image
    # an open shard whose parts saw open-1 fail, then succeed; open-2 succeed, then (a later retry) fail
    early = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    late = early + dt.timedelta(hours=1)
    parts = [[result_row(uri, 5, "open-1", status="failed", finished_at=late, shard=1),
              result_row(uri, 6, "open-2", finished_at=early, shard=1)],
             [result_row(uri, 5, "open-1", finished_at=early, shard=1),
              result_row(uri, 6, "open-2", status="failed", finished_at=late, shard=1)]]
    storage = write_run(uri, rows, "synthetic", input_file=input_file, parts=parts)
    for i in range(7):
        storage.write_bytes(f"images/img-{i}.png", png(i))

    run = RunResults(uri)
    ids = run.table["id"].to_pylist()
    assert sorted(ids) == sorted(IDS + ["open-1", "open-2"]) and len(ids) == len(set(ids))
    assert run.row("open-1")["status"] == "ok" and run.row("open-2")["status"] == "ok"  # ok beats failed
    assert run.row("ünï-çødé ☃")["category"] == "Text" and run.row("plain")["category"] == "Colors"
    assert run.row("plain")["score:eval/classifier"] == pytest.approx(0.25)
    assert "score:eval_initial/classifier" in run.numeric_columns and "final_loss" in run.numeric_columns
    assert run.image("plain").data == png(0) and run.image("plain").mimetype == "image/png"
    for item_id in ("with space", "a/b/c", "ünï-çødé ☃", "../../etc/passwd-lookalike", "no such id"):
        assert run.image(item_id) is None
    assert run.image("plain", "initial_image") is None  # column absent: not recorded
    assert run.row("no such id") is None


def test_gallery_query(tmp_path: Path):
    uri = str(tmp_path / "run")
    rows = [result_row(uri, i, f"id-{i:02d}", score=i / 20) for i in range(20)]
    rows += [result_row(uri, 20 + i, f"bad-{i}", status="failed") for i in range(3)]
    write_run(uri, rows, "g")
    run = RunResults(uri)

    def page(**args: Any):
        return gallery_page(run, GalleryQuery.parse({k: str(v) for k, v in args.items()}, run))

    everything = page(per_page=10)
    assert (everything.total, everything.matched, everything.pages, len(everything.rows)) == (23, 23, 3, 10)
    assert [r["id"] for r in page(per_page=10, page=3).rows] == ["bad-0", "bad-1", "bad-2"]
    assert page(per_page=10, page=99).page == 3  # past the end: the last page
    failed = page(status="failed")
    assert failed.matched == 3 and all(r["error"].startswith("loss became NaN") for r in failed.rows)
    ranged = page(by="score:guide/classifier", min=0.5, max=0.7, sort="score:guide/classifier", order="desc")
    assert [r["id"] for r in ranged.rows] == ["id-14", "id-13", "id-12", "id-11", "id-10"]
    by_target = page(target="1", status="ok", sort="final_loss")
    finals = [r["final_loss"] for r in by_target.rows]
    assert by_target.matched == 7 and finals == sorted(finals)
    assert page(sort="score:eval/classifier", order="desc").rows[-1]["status"] == "failed"  # nulls last
    assert page(category="Colors").matched == 0  # the input had no categories
    for bad in ({"sort": "../../etc/passwd"}, {"by": "id"}, {"min": "1"}, {"page": "0"}, {"per_page": "100000"},
                {"status": "<b>"}, {"order": "sideways"}):
        with pytest.raises(Exception, match="bad gallery query"):
            GalleryQuery.parse(bad, run)


def test_hundred_thousand_rows_open_at_once(tmp_path: Path, serve):
    uri = str(tmp_path / "big")
    n = 100_000
    t0 = time.perf_counter()
    table = pa.table({
        "id": [f"item-{i:06d}" for i in range(n)], "shard": pa.array([0] * n, pa.int32()), "status": ["ok"] * n,
        "image_uri": [f"{uri}/images/item-{i:06d}.png" for i in range(n)], "prompt": [f"prompt {i}" for i in range(n)],
        "target": [str(i % 10) for i in range(n)], "final_loss": [((i * 7919) % n) / n for i in range(n)],
        "history": [[1.0, 0.5, 0.25]] * n,
        "scores": [f'{{"guide/classifier": {(i * 104729 % n) / n}, "eval/classifier": {i / n}}}' for i in range(n)],
    })
    storage = write_run(uri, [], "big")
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes("results/shard-00000.parquet", buffer.getvalue())
    written = time.perf_counter() - t0

    t0 = time.perf_counter()
    run = RunResults(uri)
    server = serve(create_app(run, VoteStore(f"{uri}/reviews")))
    status, _, body = server.request("GET", "/")
    first_page = time.perf_counter() - t0
    t0 = time.perf_counter()
    sorted_status, _, sorted_body = server.request(
        "GET", "/?target=3&sort=score%3Aguide%2Fclassifier&order=desc&page=40")
    sorted_page = time.perf_counter() - t0
    print(f"\n100,000 rows: written {written:.2f} s; opened + first page {first_page:.2f} s; "
          f"filtered + sorted page 40 {sorted_page * 1000:.0f} ms; first page {len(body) / 1024:.0f} KiB")
    assert status == 200 and sorted_status == 200
    html = body.decode()
    assert "100000 of 100000 rows" in html and html.count('class="card"') == 48
    assert "item-000047" in html and "item-000048" not in html
    assert "10000 of 100000 rows · page 40 of 209" in sorted_body.decode()
    assert first_page < 10 and sorted_page < 1.5, (first_page, sorted_page)


# ---- votes --------------------------------------------------------------------------------------------


def test_two_reviewers_at_once_lose_no_vote_on_s3(s3_endpoint, serve):
    options = {"endpoint_url": s3_endpoint.url}
    bucket = s3_endpoint.bucket()
    a, b = ab_runs(f"s3://{bucket}", 200, options, images=False)
    votes_uri = f"s3://{bucket}/doodl/reviews"
    server = serve(create_app(a, VoteStore(votes_uri, options), against=b))
    choices = ["left", "right", "tie", "skip"]

    def cast(reviewer: str) -> list[tuple[str, str, str]]:
        sent = []
        for i in range(200):
            pair_id, choice = f"pair {i}", choices[(i + len(reviewer)) % 4]
            status, _, body = server.request("POST", "/api/votes", {"reviewer": reviewer, "pair_id": pair_id,
                                                                    "choice": choice})
            assert status == 201, body
            sent.append((json.loads(body)["vote_id"], reviewer, pair_id))
        return sent

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        sent = [v for result in pool.map(cast, ["alice", "bøb"]) for v in result]
    seconds = time.perf_counter() - t0
    stored = VoteStore(votes_uri, options).votes()  # a fresh reader: only what reached S3
    print(f"\n2 x 200 concurrent votes to S3 in {seconds:.1f} s")
    assert sorted((v["vote_id"], v["reviewer"], v["pair_id"]) for v in stored) == sorted(sent)
    assert len({v["vote_id"] for v in stored}) == 400
    status, _, body = server.request("GET", f"/api/progress?reviewer={urllib.parse.quote('bøb')}")
    assert json.loads(body) == {"reviewer": "bøb", "done": 200, "total": 200, "next": None}
    report = build_report(stored)["studies"][0]
    assert report["overall"]["votes"] == 400 and report["agreement"][0]["pairs"] == 100  # skips left out


def test_malformed_and_repeated_votes_are_refused(tmp_path: Path, serve):
    a, b = ab_runs(str(tmp_path), 3)
    store_uri = str(tmp_path / "votes")
    server = serve(create_app(a, VoteStore(store_uri), against=b))
    good = {"reviewer": "carol", "pair_id": "pair 1", "choice": "left"}
    bad_bodies = [
        b"{not json", b"[]", b'"left"', {**good, "choice": "LEFT"}, {**good, "choice": None},
        {**good, "pair_id": "../../etc/passwd"}, {**good, "reviewer": ""}, {**good, "reviewer": "a\nb"},
        {**good, "reviewer": "x" * 101}, {**good, "extra": 1}, {"reviewer": "carol", "choice": "left"},
    ]
    for body in bad_bodies:
        status, _, text = server.request("POST", "/api/votes", body, {"Content-Type": "application/json"})
        assert status == 400, (body, text)
        assert json.loads(text)["error"].startswith("bad vote")
    status, _, _ = server.request("POST", "/api/votes", urllib.parse.urlencode(good).encode(),
                                  {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400
    assert server.request("POST", "/api/votes", good)[0] == 201
    assert server.request("POST", "/api/votes", good)[0] == 409  # a repeat
    stored = VoteStore(store_uri).votes()
    assert [(v["reviewer"], v["pair_id"], v["choice"]) for v in stored] == [("carol", "pair 1", "left")]
    # a new server on the same store (a restart) knows carol's progress and refuses the repeat too
    again = serve(create_app(a, VoteStore(store_uri), against=b))
    assert again.request("POST", "/api/votes", good)[0] == 409
    assert json.loads(again.request("GET", "/api/progress?reviewer=carol")[2])["done"] == 1


# ---- safety -------------------------------------------------------------------------------------------


def test_images_only_from_the_runs_own_keys(tmp_path: Path, serve):
    a, b = ab_runs(str(tmp_path), 2)
    server = serve(create_app(a, VoteStore(str(tmp_path / "votes")), against=b))
    assert server.request("GET", "/image?id=pair%200")[0] == 200
    for path in ("/image?id=../../etc/passwd", "/image?id=%2Fetc%2Fpasswd", "/images/../../etc/passwd",
                 "/image/../../etc/passwd", "/image?id=pair%200&kind=../../etc/passwd", "/image?id=pair%200&run=c",
                 "/ab/image?reviewer=x&pair=../../etc/passwd&side=left", "/ab/image?reviewer=x&pair=pair%200&side=up",
                 "/item?id=../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd"):
        status, _, body = server.request("GET", path)
        assert status == 404, path
        assert b"root:" not in body
    tampered = str(tmp_path / "tampered")  # a results row pointing outside its run
    write_run(tampered, [result_row(tampered, 0, "t", image_uri="/etc/passwd")], "tampered")
    other = serve(create_app(RunResults(tampered), VoteStore(f"{tampered}/reviews")))
    html = other.request("GET", "/")[2].decode()
    assert "no image" in html and "/image?" not in html
    assert other.request("GET", "/image?id=t")[0] == 404


def test_token_required_and_never_logged(tmp_path: Path, serve, caplog):
    a, b = ab_runs(str(tmp_path), 2)
    token = "s3cret-tøken"
    server = serve(create_app(a, VoteStore(str(tmp_path / "votes")), against=b, token=token, loopback=False))
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        assert server.request("GET", "/")[0] == 401
        assert server.request("GET", "/image?id=pair%200")[0] == 401
        assert server.request("GET", "/", headers={"X-Review-Token": "s3cret"})[0] == 401
        assert server.request("POST", "/api/votes", {"reviewer": "x", "pair_id": "pair 0", "choice": "tie"})[0] == 401
        assert server.request("GET", "/", headers={"Authorization": "Bearer " + token})[0] == 200
        status, headers, _ = server.request("GET", "/ab?reviewer=dan&token=" + urllib.parse.quote(token))
        assert status == 302 and headers["Location"] == "/ab?reviewer=dan"  # the token leaves the URL
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        assert server.request("GET", "/ab?reviewer=dan", headers={"Cookie": cookie})[0] == 200
        assert server.request("POST", "/api/votes", {"reviewer": "x", "pair_id": "pair 0", "choice": "tie"},
                              {"Cookie": cookie})[0] == 201
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "GET /ab" in logged and "s3cret" not in logged and "t%C3%B8ken" not in logged


def test_review_command_serves_and_logs_no_token(tmp_path: Path):
    a, _ = ab_runs(str(tmp_path), 2)
    token = "pr1vate-token"
    process = subprocess.Popen(
        [sys.executable, "-m", "doodl_ray.cli", "review", a.storage.uri, "--against", str(tmp_path / "none"),
         "--port", "0", "--token", token], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "reviewing digits-doodl (2 rows) against digits-none" in process.stdout.readline()
        url = process.stdout.readline().split()[1]
        assert url.startswith("http://127.0.0.1:") and token not in url
        port = int(urllib.parse.urlsplit(url).port)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", f"/ab?reviewer=eve&token={token}")
        response = conn.getresponse()
        response.read()
        assert response.status == 302
        conn.request("GET", "/ab?reviewer=eve", headers={"Cookie": response.getheader("Set-Cookie").split(";")[0]})
        response = conn.getresponse()
        assert response.status == 200 and "0 of 2" in response.read().decode()
        conn.close()
    finally:
        process.terminate()
        _, log = process.communicate(timeout=30)
    assert "GET /ab?…" in log and token not in log


def test_loopback_host_header_and_non_loopback_bind(tmp_path: Path, serve):
    a, b = ab_runs(str(tmp_path), 1)
    other = str(tmp_path / "other")
    write_run(other, [result_row(other, 0, "another id")], "other")
    with pytest.raises(InvalidInput, match="share no item"):
        create_app(a, VoteStore(str(tmp_path / "votes")), against=RunResults(other))
    server = serve(create_app(a, VoteStore(str(tmp_path / "votes")), against=b))
    assert server.request("GET", "/", headers={"Host": "localhost:1"})[0] == 200
    assert server.request("GET", "/", headers={"Host": "rebound.example.com"})[0] == 400
    for host in ("0.0.0.0", "192.168.1.20", "::", "example.com"):
        err = io.StringIO()
        with redirect_stderr(err):
            assert main(["review", str(tmp_path / "doodl"), "--host", host, "--port", "0"]) == 1
        assert err.getvalue().count("\n") == 1 and "without --token" in err.getvalue(), err.getvalue()


def test_prompts_and_errors_are_escaped(tmp_path: Path, serve):
    uri = str(tmp_path / "run")
    evil = '<script>window.pwned=1</script><img src=x onerror="alert(1)">'
    write_run(uri, [result_row(uri, 0, evil, prompt=evil), result_row(uri, 1, "f", status="failed", error=evil)], "x")
    server = serve(create_app(RunResults(uri), VoteStore(f"{uri}/reviews")))
    for path in ("/", "/?status=failed", f"/item?id={urllib.parse.quote(evil)}", "/item?id=f"):
        status, headers, body = server.request("GET", path)
        html = body.decode()
        assert status == 200 and "<script>window" not in html and "<img src=x" not in html
        assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html
        assert "script-src 'nonce-" in headers["Content-Security-Policy"]


# ---- the report ---------------------------------------------------------------------------------------


def vote(reviewer: str, pair: str, choice: str, left: str = "a", minute: int = 0, **fields: Any) -> dict[str, Any]:
    return {"vote_id": f"{reviewer}-{pair}-{minute}", "pair_id": pair, "run_a": "doodl", "run_b": "none",
            "run_a_uri": "s3://x/doodl", "run_b_uri": "s3://x/none", "left": left, "choice": choice,
            "reviewer": reviewer, "question": fields.get("question", "Which?"), "target": fields.get("target", "1"),
            "category": fields.get("category"), "voted_at": dt.datetime(2025, 1, 1, 0, minute, tzinfo=dt.timezone.utc)}


def test_report_statistics(tmp_path: Path):
    # alice: a wins p0..p5 (shown left or right), b wins p6 p7, tie p8, skip p9
    alice = [vote("alice", f"p{i}", "left" if i % 2 else "right", left="a" if i % 2 else "b") for i in range(6)]
    alice += [vote("alice", "p6", "right"), vote("alice", "p7", "left", left="b"), vote("alice", "p8", "tie"),
              vote("alice", "p9", "skip")]
    alice[0] = {**alice[0], "category": "Colors"}
    # bob: rated p0..p4 and p6; changed his mind on p0 (the later vote counts)
    bob = [vote("bob", "p0", "right", minute=1), vote("bob", "p0", "right", left="b", minute=2)]
    bob += [vote("bob", f"p{i}", "left") for i in (1, 2)] + [vote("bob", "p3", "right"), vote("bob", "p4", "tie"),
                                                               vote("bob", "p6", "right", target="2")]
    other = vote("alice", "p0", "left", question="Which is more realistic?")
    report = build_report(alice + bob + [other], "votes-uri")
    assert [s["question"] for s in report["studies"]] == ["Which is more realistic?", "Which?"]
    study = report["studies"][1]
    overall = study["overall"]
    # a: alice 6 + bob (p0, p1, p2) 3 = 9; b: alice 2 + bob (p3, p6) 2 = 4; ties 2; skips 1
    assert (overall["a"]["wins"], overall["b"]["wins"], overall["ties"], overall["skips"]) == (9, 4, 2, 1)
    assert overall["votes"] == 16 and overall["decisive"] == 13
    assert overall["a"]["win_rate"] == pytest.approx(9 / 13) and overall["b"]["win_rate"] == pytest.approx(4 / 13)
    z = 1.959963984540054
    n, p = 13, 9 / 13
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert overall["a"]["ci95"] == pytest.approx([centre - half, centre + half])
    assert overall["b"]["ci95"] == pytest.approx([1 - centre - half, 1 - centre + half])
    assert overall["sign_test_p"] == pytest.approx(binomtest(9, 13).pvalue)
    assert set(study["by_target"]) == {"1", "2"} and study["by_target"]["2"]["b"]["wins"] == 1
    assert study["by_category"] == {"Colors": study["by_category"]["Colors"]}
    assert study["by_category"]["Colors"]["a"]["wins"] == 1
    (pair,) = study["agreement"]
    # both rated p0..p4 and p6: alice a a a a a b, bob a a a b tie b
    assert pair["reviewers"] == ["alice", "bob"] and pair["pairs"] == 6 and pair["raw"] == pytest.approx(4 / 6)
    assert pair["cohen_kappa"] == pytest.approx(cohen_kappa_score(list("aaaaab"), ["a", "a", "a", "b", "tie", "b"]))
    assert build_report([])["studies"] == []

    store = VoteStore(str(tmp_path / "votes"))
    for v in alice + bob:
        store.append(v)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["review-report", str(tmp_path / "votes"), "--json"]) == 0
    assert json.loads(out.getvalue())["studies"][0]["overall"] == json.loads(json.dumps(overall))
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["review-report", str(tmp_path / "votes")]) == 0
    text = out.getvalue()
    assert "doodl (a) vs none (b): Which?" in text and "0.69 [" in text and "raw 0.67" in text
