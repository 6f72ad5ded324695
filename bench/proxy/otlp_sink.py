"""An OTLP/HTTP sink for the proxy bench's OTel-on runs: answers every POST 200 with an empty
ExportTraceServiceResponse and counts bytes, nothing else (so it costs the shared cores next to nothing).
Prints its port, then, when stdin closes, the number of exports and bytes it took.

    python3 bench/proxy/otlp_sink.py        # prints {"port": N}
    BENCH_SIDECAR_ARGS="--otlp-endpoint http://127.0.0.1:N" BENCH_ONLY=w1 cargo bench --bench proxy"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

took = {"exports": 0, "bytes": 0}


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        self.rfile.read(n)
        took["exports"] += 1
        took["bytes"] += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(json.dumps({"port": server.server_address[1]}), flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
sys.stdin.read()
print(json.dumps(took), flush=True)
