"""An HTTP proxy in front of a real S3 server that refuses what UFile's S3 API refuses.

UFile (docs/ufile-s3.md): SigV4 only; UploadPart only in fixed 8 MiB parts (the last
may be smaller); no Content-MD5 and no x-amz-checksum-*; PutObject at most 1 GB;
ListObjects at most 5000 keys a page. Requests are forwarded unchanged (same Host
header, so signatures still verify) and bodies are streamed, never buffered whole.
Every refusal is recorded in `rejections`; `drop_after_bytes` makes the server vanish
mid-transfer (connections cut, and every later request too, until `heal()`).
`inject(Fault(...))` plays a sick server for chosen S3 operations: an HTTP error status,
a connection reset half way through the request body, or an answer held back for a while.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.servers.process import Served

MiB = 1024 * 1024
PART_SIZE = 8 * MiB
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "expect"}
BANNED_HEADERS = ("content-md5", "x-amz-sdk-checksum-algorithm", "x-amz-trailer")
CHUNK = 64 * 1024
DRAIN_LIMIT = 64 * MiB


class Gone(Exception):
    """The proxy is playing a dead server."""


@dataclass
class Fault:
    """A sick answer to the S3 operations in `ops` (see `operation`), `times` times (None: until heal).

    kind: "status" answers `status` with an S3 error document; "reset" reads half the request
    body, then resets the connection; "slow" forwards the request and holds the answer `delay` s.
    `ending`: only requests whose path ends so (one object).
    """

    kind: str
    ops: frozenset[str]
    times: int | None = 1
    status: int = 500
    delay: float = 0.0
    ending: str = ""
    hits: int = 0


def operation(method: str, path: str, query: dict) -> str:
    """The S3 operation a request is: upload-part, create-upload, complete-upload, abort-upload, list-uploads,
    put, get, head, delete, list, or bucket."""
    is_object = path.strip("/").count("/") >= 1
    if "uploadId" in query:
        return {"PUT": "upload-part", "POST": "complete-upload", "DELETE": "abort-upload"}.get(method, "list-parts")
    if "uploads" in query:
        return "create-upload" if method == "POST" else "list-uploads"
    if not is_object:
        return "list" if method == "GET" else "bucket"
    return {"PUT": "put", "GET": "get", "HEAD": "head", "DELETE": "delete"}.get(method, method.lower())


class UFileProxy(Served):
    """Threaded proxy on 127.0.0.1:<free port> forwarding to upstream ('http://127.0.0.1:8333')."""

    def __init__(self, upstream: str, put_limit: int = 1024 * MiB, part_size: int = PART_SIZE, max_keys: int = 5000):
        target = urllib.parse.urlsplit(upstream)
        self.upstream = (target.hostname, target.port or 80)
        self.put_limit, self.part_size, self.max_keys = put_limit, part_size, max_keys
        self.rejections: list[str] = []
        self.requests: list[str] = []
        self.drop_after_bytes: int | None = None
        self.gone = False
        self.faults: list[Fault] = []
        self._relayed = 0
        self._parts: dict[str, dict[int, int]] = defaultdict(dict)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="ufile-proxy", daemon=True)

    def start(self) -> UFileProxy:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        """Forget rejections and faults (between tests)."""
        with self._lock:
            self.rejections.clear()
            self.requests.clear()
            self.heal()

    def cut_after(self, nbytes: int) -> None:
        """Vanish after relaying nbytes more body bytes (either direction)."""
        with self._lock:
            self._relayed, self.drop_after_bytes = 0, nbytes

    def heal(self) -> None:
        """Come back: stop dropping connections and playing sick."""
        self.gone, self.drop_after_bytes, self._relayed = False, None, 0
        self.faults = []

    def inject(self, fault: Fault) -> Fault:
        """Play fault from now on (until its `times` are used up, or heal)."""
        with self._lock:
            self.faults.append(fault)
        return fault

    def fault_for(self, op: str, path: str) -> Fault | None:
        """The fault to play on this request, if any (counting it)."""
        with self._lock:
            for fault in self.faults:
                if (
                    op in fault.ops
                    and path.endswith(fault.ending)
                    and (fault.times is None or fault.hits < fault.times)
                ):
                    fault.hits += 1
                    return fault
        return None

    def check(self, method: str, path: str, query: dict, headers) -> str | None:
        """Why UFile would refuse this request, or None."""
        auth = headers.get("Authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 ") and query.get("X-Amz-Algorithm") != ["AWS4-HMAC-SHA256"]:
            return "only Signature V4 is supported"
        for name in headers.keys():
            low = name.lower()
            if low in BANNED_HEADERS or low.startswith("x-amz-checksum-"):
                return f"header {name} is not supported (no Content-MD5, no S3 checksums)"
        if "chunked" in headers.get("Transfer-Encoding", "").lower() or "aws-chunked" in headers.get(
            "Content-Encoding", ""
        ):
            return "chunked uploads are not supported"
        size = int(headers.get("Content-Length") or 0)
        is_object = path.strip("/").count("/") >= 1
        if method == "PUT" and "partNumber" in query and "uploadId" in query:
            if size > self.part_size:
                return f"part of {size} bytes: UploadPart takes fixed {self.part_size}-byte parts"
        elif method == "PUT" and is_object and "x-amz-copy-source" not in headers and size > self.put_limit:
            return f"PutObject of {size} bytes exceeds {self.put_limit}: use multipart upload"
        if method == "POST" and "uploadId" in query:
            return self._check_parts(query["uploadId"][0])
        if method == "GET" and not is_object and "max-keys" in query and int(query["max-keys"][0]) > self.max_keys:
            return f"max-keys {query['max-keys'][0]} exceeds {self.max_keys}"
        return None

    def _check_parts(self, upload_id: str) -> str | None:
        with self._lock:
            parts = self._parts.pop(upload_id, {})
        numbers = sorted(parts)
        for number in numbers[:-1]:
            if parts[number] != self.part_size:
                return f"part {number} has {parts[number]} bytes: every part but the last must be {self.part_size}"
        return None

    def record_part(self, query: dict, size: int) -> None:
        """Remember an accepted part's size for the check at CompleteMultipartUpload."""
        with self._lock:
            self._parts[query["uploadId"][0]][int(query["partNumber"][0])] = size

    def reject(self, line: str, reason: str) -> None:
        with self._lock:
            self.rejections.append(f"{line}: {reason}")

    def account(self, nbytes: int) -> None:
        """Count relayed bytes; raise Gone once the fault budget is spent."""
        with self._lock:
            if self.drop_after_bytes is not None:
                self._relayed += nbytes
                if self._relayed > self.drop_after_bytes:
                    self.gone = True
            if self.gone:
                raise Gone()


def _handler(proxy: UFileProxy):
    class Handler(_Relay):
        pass

    Handler.proxy = proxy
    return Handler


class _Relay(BaseHTTPRequestHandler):
    """Forward one request at a time to the upstream S3, streaming both bodies."""

    protocol_version = "HTTP/1.1"
    proxy: UFileProxy
    timeout = 300

    def log_message(self, format, *args):  # quiet
        pass

    def handle_expect_100(self):
        reason = self._reason()
        if reason:
            self._refuse(reason, drain=False)
            return False
        return super().handle_expect_100()

    def do_GET(self):
        self._relay()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET  # noqa: N815 - http.server's naming

    def _reason(self) -> str | None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        return self.proxy.check(self.command, url.path, query, self.headers)

    def _relay(self):
        try:
            if self.proxy.gone:
                raise Gone()
            if self.headers.get("Expect", "").lower() != "100-continue":
                reason = self._reason()
                if reason:
                    return self._refuse(reason, drain=True)
            self.proxy.requests.append(f"{self.command} {self.path}")
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
            fault = self.proxy.fault_for(operation(self.command, url.path, query), url.path)
            if fault is not None and fault.kind != "slow":
                return self._play(fault)
            self._forward(delay=fault.delay if fault else 0.0)
        except Gone:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _play(self, fault: Fault) -> None:
        """Answer with an error status, or reset the connection half way through the body."""
        size = int(self.headers.get("Content-Length") or 0)
        if fault.kind == "reset":
            self._copy_body(size // 2, lambda chunk: None)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raise Gone()  # closing with SO_LINGER 0 sends a TCP RST
        self._copy_body(size, lambda chunk: None)
        body = b"<?xml version='1.0'?><Error><Code>InternalError</Code><Message>injected</Message></Error>"
        self.send_response_only(fault.status, "Injected")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self, delay: float = 0.0):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        upstream = http.client.HTTPConnection(*self.proxy.upstream, timeout=self.timeout)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_HEADERS:
                    upstream.putheader(name, value)
            upstream.endheaders()
            size = int(self.headers.get("Content-Length") or 0)
            self._copy_body(size, upstream.send)
            response = upstream.getresponse()
            if self.command == "PUT" and "partNumber" in query and response.status == 200:
                self.proxy.record_part(query, size)
            time.sleep(delay)
            self._send_response(response)
        finally:
            upstream.close()

    def _copy_body(self, size: int, send) -> None:
        remaining = size
        while remaining > 0:
            chunk = self.rfile.read(min(CHUNK, remaining))
            if not chunk:
                raise Gone()  # client went away
            self.proxy.account(len(chunk))
            send(chunk)
            remaining -= len(chunk)

    def _send_response(self, response: http.client.HTTPResponse) -> None:
        length = response.getheader("Content-Length")
        body = None
        if length is None and self.command != "HEAD" and response.status not in (204, 304):
            body = response.read()  # small XML answers without a length
            length = str(len(body))
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_HEADERS and name.lower() != "content-length":
                self.send_header(name, value)
        if length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        if self.command == "HEAD":
            return
        if body is not None:
            self.wfile.write(body)
            return
        while chunk := response.read(CHUNK):
            self.proxy.account(len(chunk))
            self.wfile.write(chunk)

    def _refuse(self, reason: str, *, drain: bool) -> None:
        """Answer 400 with an S3 error document and record the refusal."""
        self.proxy.reject(f"{self.command} {self.path}", reason)
        size = int(self.headers.get("Content-Length") or 0)
        if drain and size <= DRAIN_LIMIT:
            self._copy_body(size, lambda chunk: None)
        else:
            self.close_connection = True
        body = f"<?xml version='1.0'?><Error><Code>InvalidRequest</Code><Message>{reason}</Message></Error>".encode()
        self.send_response_only(400, "Bad Request")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
