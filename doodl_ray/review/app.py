"""The review web app (Flask, server-rendered Jinja templates, a few lines of inline script for the A/B
keys): a paged gallery of one run, item details, blind A/B votes against a second run, and the report.

Safe by default: templates autoescape everything a user's Parquet supplied; a Content-Security-Policy
with a per-request nonce stops any script the page did not write; images are served only through the
rows' recorded image keys; with a token every request must carry it (header, cookie, or once in the URL,
after which it moves to a cookie), compared in constant time and never written to the request log; on a
loopback bind the Host header must be a loopback name, so a rebinding DNS name cannot reach the app."""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, abort, g, jsonify, redirect, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from doodl_ray.errors import InvalidInput
from doodl_ray.jobs.rows import STATUSES
from doodl_ray.review.gallery import GalleryQuery, distinct, gallery_page, rungs
from doodl_ray.review.report import build_report
from doodl_ray.review.results import SCORE_PREFIX, RunResults
from doodl_ray.review.study import AlreadyVoted, Study
from doodl_ray.review.votes import VoteRequest, VoteStore, reviewer_name

TOKEN_COOKIE = "doodl_review_token"
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse, before anything starts, to serve beyond this machine without a token."""
    if token is None and not is_loopback(host):
        raise InvalidInput(f"refusing to serve on {host} without --token (anyone who reaches it could read the run "
                           "and vote); pass --token or DOODL_REVIEW_TOKEN, or bind 127.0.0.1")


def create_app(run: RunResults, votes: VoteStore, *, against: RunResults | None = None, question: str | None = None,
               token: str | None = None, loopback: bool = True) -> Flask:
    """The app over `run` and, with `against`, a blind A/B study of the two whose votes go to `votes`."""
    app = Flask(__name__)
    app.config["TRUSTED_HOSTS"] = LOOPBACK_NAMES if loopback else None
    study = Study(run, against, votes, *([question] if question else [])) if against is not None else None
    runs = {"a": run, **({"b": against} if against is not None else {})}

    def pick_run() -> RunResults:
        chosen = runs.get(request.args.get("run", "a"))
        if chosen is None:
            abort(404)
        return chosen

    @app.before_request
    def _authorize() -> Response | None:
        g.nonce = secrets.token_urlsafe(16)
        if token is None:
            return None
        supplied = (request.headers.get("X-Review-Token") or _bearer(request.headers.get("Authorization"))
                    or request.cookies.get(TOKEN_COOKIE) or request.args.get("token") or "")
        if not hmac.compare_digest(supplied.encode(), token.encode()):
            return _error(401, "this review server needs its token: open it with ?token=... once")
        if "token" in request.args and request.method == "GET":
            # out of the URL (history, Referer) into an HttpOnly cookie
            args = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
            response = redirect(request.path + (f"?{urlencode(args)}" if args else ""))
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
            return response
        return None

    @app.after_request
    def _headers(response: Response) -> Response:
        nonce = g.get("nonce", "")
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; img-src 'self'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.errorhandler(InvalidInput)
    def _bad_request(exc: InvalidInput) -> Response:
        return _error(409 if isinstance(exc, AlreadyVoted) else 400, str(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return _error(exc.code or 500, exc.description or exc.name)

    @app.context_processor
    def _common() -> dict[str, Any]:
        return {"runs": runs, "study": study, "nonce": g.get("nonce", "")}

    @app.get("/")
    def gallery() -> str:
        shown = pick_run()
        query = GalleryQuery.parse(request.args, shown)
        page = gallery_page(shown, query)
        for row in page.rows:
            row["viewable"] = shown.viewable(row)
        return render_template(
            "gallery.html", run=shown, run_key=request.args.get("run", "a"), query=query, page=page,
            columns=score_columns(shown), numeric=shown.numeric_columns, targets=distinct(shown, "target"),
            categories=distinct(shown, "category"), rungs=rungs(shown), statuses=STATUSES, label=column_label)

    @app.get("/item")
    def item() -> str:
        shown = pick_run()
        row = shown.row(request.args.get("id", ""))
        if row is None:
            abort(404, "no such item in this run")
        return render_template(
            "item.html", run=shown, run_key=request.args.get("run", "a"), row=row, columns=score_columns(shown),
            plot=loss_plot(row.get("history") or [], row.get("best_iteration")),
            has_initial=shown.has_image(row["id"], "initial_image"),
            has_result=shown.has_image(row["id"], "image"), label=column_label)

    @app.get("/image")
    def image() -> Response:
        kind = {"result": "image", "initial": "initial_image"}.get(request.args.get("kind", "result"))
        found = pick_run().image(request.args.get("id", ""), kind) if kind else None
        return _image_response(found)

    @app.get("/ab")
    def ab() -> str:
        needs_study()
        reviewer = request.args.get("reviewer", "").strip()
        if not reviewer:
            return render_template("ab.html", reviewer=None)
        reviewer = reviewer_name(reviewer)
        pair_id, done = study.next_pair(reviewer)
        row = study.a.row(pair_id) if pair_id is not None else None
        return render_template("ab.html", reviewer=reviewer, pair_id=pair_id, row=row, done=done,
                               total=len(study.pairs))

    @app.get("/ab/image")
    def ab_image() -> Response:
        needs_study()
        reviewer, pair_id, side = (request.args.get(k, "") for k in ("reviewer", "pair", "side"))
        if pair_id not in study.pairs or side not in ("left", "right") or not reviewer:
            abort(404)
        left = study.left(reviewer, pair_id)
        shown = study.run(left if side == "left" else ("b" if left == "a" else "a"))
        return _image_response(shown.image(pair_id))

    @app.post("/api/votes")
    def api_vote() -> tuple[Response, int]:
        needs_study()
        if not request.is_json:
            raise InvalidInput("bad vote: send application/json")
        vote = study.vote(VoteRequest.parse(request.get_json(silent=True)))
        _, done = study.next_pair(vote["reviewer"])
        return jsonify(vote_id=vote["vote_id"], done=done, total=len(study.pairs)), 201

    @app.get("/api/progress")
    def api_progress() -> Response:
        needs_study()
        reviewer = reviewer_name(request.args.get("reviewer", ""))
        pair_id, done = study.next_pair(reviewer)
        return jsonify(reviewer=reviewer, done=done, total=len(study.pairs), next=pair_id)

    @app.get("/report")
    def report_page() -> str:
        return render_template("report.html", report=build_report(votes.votes(), votes.uri))

    @app.get("/api/report")
    def api_report() -> Response:
        return jsonify(build_report(votes.votes(), votes.uri))

    def needs_study() -> None:
        if study is None:
            abort(404, "no A/B study: start the review with --against OTHER_RUN")

    return app


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


def _error(code: int, message: str) -> Response:
    if request.path.startswith("/api/") or request.is_json:
        response = jsonify(error=message)
    else:
        response = Response(render_template("error.html", code=code, message=message), mimetype="text/html")
    response.status_code = code
    return response


def _image_response(found: Any) -> Response:
    if found is None:
        abort(404, "no such image")
    response = Response(found.data, mimetype=found.mimetype)
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


def score_columns(run: RunResults) -> list[tuple[str, str | None, str]]:
    """(label, column before, column after) for each score shown: the guide's loss, then each score,
    with the evaluation model's score of the unguided sample as the 'before' of its eval/ score."""
    names = set(run.score_columns)
    present = set(run.table.column_names)
    result: list[tuple[str, str | None, str]] = []
    if "final_loss" in present:
        result.append(("guide loss", "initial_loss" if "initial_loss" in present else None, "final_loss"))
    for column in sorted(names):
        name = column.removeprefix(SCORE_PREFIX)
        if name.startswith("eval_initial/"):
            continue
        before = f"{SCORE_PREFIX}eval_initial/{name.removeprefix('eval/')}" if name.startswith("eval/") else None
        result.append((name, before if before in names else None, column))
    return result


def column_label(column: str) -> str:
    return column.removeprefix(SCORE_PREFIX).replace("_", " ")


def loss_plot(history: list[float], best_iteration: int | None = None, width: int = 360,
              height: int = 120) -> dict[str, Any] | None:
    """An SVG polyline of the loss per iteration, the returned iterate marked (None for fewer than two
    finite points)."""
    points = [(i, v) for i, v in enumerate(history) if v is not None and v == v and abs(v) != float("inf")]
    if len(points) < 2:
        return None
    low, high = min(v for _, v in points), max(v for _, v in points)
    span, last = (high - low) or 1.0, max(i for i, _ in points) or 1
    pad = 6

    def xy(i: int, v: float) -> str:
        return f"{pad + i / last * (width - 2 * pad):.1f},{pad + (high - v) / span * (height - 2 * pad):.1f}"

    marked = dict(points).get(best_iteration) if best_iteration is not None else None
    return {"points": " ".join(xy(i, v) for i, v in points), "width": width, "height": height, "low": low,
            "high": high, "iterations": len(history),
            "best": xy(best_iteration, marked).split(",") if marked is not None else None}


class QuietRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler with query strings cut from every log line (a token may travel in one)."""

    def log(self, type: str, message: str, *args: Any) -> None:
        super().log(type, "%s", re.sub(r"\?[^\s\"']*", "?…", message % args if args else message))


def make_review_server(app: Flask, host: str, port: int) -> BaseWSGIServer:
    """A threaded HTTP server for the app (port 0: a free one, see .server_port)."""
    return make_server(host, port, app, threaded=True, request_handler=QuietRequestHandler)
