"""A foreign downstream: an HTTP server instrumented with the official OpenTelemetry Python
SDK. It extracts the W3C context of each request with the SDK's propagator, opens its server
span under it, and answers with the ids it saw.

usage: otel_server.py
Prints its port on the first line, then serves until standard input closes.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

trace.set_tracer_provider(TracerProvider())
tracer = trace.get_tracer("downstream")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        carrier = {k.lower(): v for k, v in self.headers.items()}
        ctx = TraceContextTextMapPropagator().extract(carrier)
        parent = trace.get_current_span(ctx).get_span_context()
        with tracer.start_as_current_span("downstream", context=ctx, kind=trace.SpanKind.SERVER) as span:
            own = span.get_span_context()
            body = json.dumps({
                "trace_id": format(own.trace_id, "032x"),
                "parent_span_id": format(parent.span_id, "016x"),
                "parent_is_remote": parent.is_remote,
            }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
sys.stdin.read()
server.shutdown()
