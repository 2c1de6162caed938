"""HTTP front end: a stdlib ThreadingHTTPServer that records, authenticates, validates and
dispatches each request to the handler for its OpenAPI operationId.

Order per request: record -> injected fault -> route -> api-version -> authentication ->
body parse + schema validation -> handler. Every answer that is not 2xx carries the Batch
error JSON, so the SDK's BatchExceptionPolicy builds the same exception it would for Azure.
"""
from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from .errors import BatchServiceError
from .faults import ResponseDropped

if TYPE_CHECKING:
    from .service import BatchEmulator


@dataclass
class RecordedRequest:
    """What the client sent (Authorization value redacted) and what it got back."""
    method: str
    path: str                     # decoded path, no query
    query: dict[str, str]
    headers: dict[str, str]
    body: Any                     # parsed JSON, raw text if not JSON, None if empty
    operation_id: str | None = None
    status: int | None = None
    error_code: str | None = None
    time: float = field(default_factory=time.time)


@dataclass
class Response:
    status: int
    body: Any = None              # dict -> JSON, bytes -> octet-stream, None -> empty
    headers: dict[str, str] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        self.server.svc.log("http: " + format % args)

    def do_GET(self) -> None: self._handle()
    def do_POST(self) -> None: self._handle()
    def do_PUT(self) -> None: self._handle()
    def do_PATCH(self) -> None: self._handle()
    def do_DELETE(self) -> None: self._handle()
    def do_HEAD(self) -> None: self._handle()

    def _handle(self) -> None:
        svc = self.server.svc
        request_id = str(uuid.uuid4())
        raw_path, _, raw_query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items()}
        redacted = {k: (v.split(" ", 1)[0] + " [redacted]" if k.lower() == "authorization" else v)
                    for k, v in headers.items()}
        query = {k: v[0] for k, v in parse_qs(raw_query, keep_blank_values=True).items()}
        body: Any = None
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                body = raw_body.decode("utf-8", "replace")
        rec = RecordedRequest(self.command, unquote(raw_path), query, redacted, body)
        svc.record(rec)
        try:
            status = svc.faults.take_request_fault(self.command, unquote(raw_path))
            if status is not None:
                code = {500: "InternalServerError", 503: "ServerBusy"}.get(status, "InjectedFault")
                raise BatchServiceError(status, code, "The server encountered an injected fault (emulator hook).")
            route, params = svc.spec.match(self.command, raw_path)
            rec.operation_id = route.operation_id
            version = query.get("api-version")
            if version != svc.spec.api_version:
                raise BatchServiceError(400, "InvalidApiVersionParameter" if version else "MissingRequiredQueryParameter",
                                        f"The api-version {version!r} is not supported; use {svc.spec.api_version}.",
                                        [("QueryParameterName", "api-version"),
                                         ("QueryParameterValue", version or "")])
            svc.auth.check(self.command, raw_path, raw_query, headers)
            schema, required = svc.spec.body_schema(route)
            if schema is not None:
                if raw_body and not isinstance(body, (dict, list)):
                    raise BatchServiceError(400, "InvalidRequestBody", "The specified Request Body is not syntactically valid.")
                if body is None and required:
                    raise BatchServiceError(400, "InvalidRequestBody",
                                            "The request body is required.")
                if body is not None:
                    body = svc.spec.validate(schema, body)
            resp = svc.dispatch(route.operation_id, params, query, headers, body, len(raw_body))
        except ResponseDropped:  # faults.lose_responses(status=0): done, then the connection closes
            rec.status, rec.error_code = 0, "ConnectionDropped"
            self.close_connection = True
            return
        except BatchServiceError as e:
            rec.error_code = e.code
            resp = Response(e.status, e.body(request_id), e.headers)
        except Exception as e:  # an emulator bug: answer 500 and keep the trace for the test log
            import traceback
            svc.log("handler crashed:\n" + traceback.format_exc())
            err = BatchServiceError(500, "InternalServerError", f"emulator error: {e}")
            rec.error_code = err.code
            resp = Response(500, err.body(request_id))
        rec.status = resp.status
        self._send(resp, request_id, headers)

    def _send(self, resp: Response, request_id: str, req_headers: dict[str, str]) -> None:
        if isinstance(resp.body, (dict, list)):
            payload = json.dumps(resp.body).encode()
            ctype = "application/json;odata=minimalmetadata"
        elif isinstance(resp.body, bytes):
            payload, ctype = resp.body, "application/octet-stream"
        else:
            payload, ctype = b"", None
        self.send_response(resp.status)
        self.send_header("request-id", request_id)
        crid = next((v for k, v in req_headers.items() if k.lower() == "client-request-id"), None)
        if crid:
            self.send_header("client-request-id", crid)
        self.send_header("DataServiceVersion", "3.0")
        for k, v in resp.headers.items():
            self.send_header(k, v)
        if ctype and "Content-Type" not in resp.headers:
            self.send_header("Content-Type", ctype)
        if "Content-Length" not in resp.headers:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], svc: BatchEmulator) -> None:
        super().__init__(addr, _Handler)
        self.svc = svc


class HttpFrontEnd:
    """Owns the listening socket and its serving thread."""

    def __init__(self, svc: BatchEmulator, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self.server = _Server((host, port), svc)
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="batch-emulator-http", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
