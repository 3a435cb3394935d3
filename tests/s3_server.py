"""A real S3 endpoint for tests: moto's server on 127.0.0.1 (a free port), reached over HTTP with
endpoint_url, plus a fault-injecting HTTP proxy in front of it that answers 503 SlowDown to chosen PUTs
(throttling as S3 really does it), for testing retries without patching any client."""

from __future__ import annotations

import http.client
import os
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import boto3
import pytest
import s3fs
from moto.server import ThreadedMotoServer

from doodl_ray.benchmarks.local_cluster import free_port

_SERVER: list["S3Endpoint"] = []
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class S3Endpoint:
    """The server's URL and helpers to make buckets and clients against it."""

    def __init__(self, url: str):
        self.url = url

    def bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=self.url).create_bucket(Bucket=name)
        return name

    def fs(self) -> s3fs.S3FileSystem:
        return s3fs.S3FileSystem(endpoint_url=self.url, skip_instance_cache=True)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    """moto's S3 server for the whole session; fake credentials in the environment (Ray workers inherit
    them, since the Ray session fixture starts after this one)."""
    if _SERVER:  # the fixture is imported by several test modules: one server for all
        yield _SERVER[0]
        return
    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    _SERVER.append(S3Endpoint(f"http://127.0.0.1:{port}"))
    try:
        yield _SERVER[0]
    finally:
        _SERVER.clear()
        server.stop()


class FaultProxy:
    """Forwards every request to `upstream`; the first `failures` PUTs whose path contains `match` get a
    503 SlowDown instead. `injected` counts the faults served."""

    def __init__(self, upstream: str, failures: int, match: str):
        self.upstream = upstream.removeprefix("http://")
        self.failures, self.match, self.injected = failures, match, 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "PUT" and proxy.match in self.path and proxy._take_fault():
                    error = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                conn.request(self.command, self.path, body=body or None, headers=dict(self.headers))
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _take_fault(self) -> bool:
        with self.lock:
            if self.injected < self.failures:
                self.injected += 1
                return True
            return False

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
