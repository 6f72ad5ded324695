"""A small OTLP/HTTP trace receiver for the tests: decodes every POST to /v1/traces with the official
protobuf bindings (PyPI's opentelemetry-proto) and prints one JSON line per request on stdout:
{"path", "content_type", "headers", "request": <ExportTraceServiceRequest as a dict>}. A body that is not a valid
ExportTraceServiceRequest is answered 400 and printed as {"error": ...}. Listens on 127.0.0.1, a free port
(printed first as {"port": N}); stops when its stdin closes (the test went away) or after 300 s.

Usage: otlp_receiver.py [status]   -- answer every export with this HTTP status (default 200)."""

import base64
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

STATUS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
lock = threading.Lock()


def emit(obj):
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        req = ExportTraceServiceRequest()
        try:
            req.ParseFromString(body)
        except Exception as e:  # noqa: BLE001 - any decode failure is the test's finding
            emit({"error": repr(e)})
            self.send_response(400)
            self.end_headers()
            return
        decoded = MessageToDict(req, preserving_proto_field_name=True)
        # Ids as the W3C header writes them (the JSON mapping gives bytes as base64).
        for rs in decoded.get("resource_spans", []):
            for ss in rs.get("scope_spans", []):
                for span in ss.get("spans", []):
                    for key in ("trace_id", "span_id", "parent_span_id"):
                        if key in span:
                            span[key] = base64.b64decode(span[key]).hex()
        emit(
            {
                "path": self.path,
                "content_type": self.headers.get("content-type"),
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "request": decoded,
                "bytes": len(body),
                # The bindings write the decoded message back byte for byte: fields in the .proto's order, each
                # with the wire type the .proto gives it.
                "same_bytes_back": req.SerializeToString() == body,
            }
        )
        out = ExportTraceServiceResponse().SerializeToString()
        self.send_response(STATUS)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
emit({"port": server.server_address[1]})


def watch_stdin():
    sys.stdin.read()
    os._exit(0)


threading.Thread(target=watch_stdin, daemon=True).start()
threading.Timer(300, lambda: os._exit(0)).start()
server.serve_forever()
