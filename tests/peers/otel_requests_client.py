"""A foreign peer: the official OpenTelemetry Python SDK with the `requests` instrumentation
calls a Garrison server and checks that the server joined the client's trace.

usage: otel_requests_client.py URL
Prints one JSON line: the client span's trace and span ids and what the server answered.
Exits 1 when the server's `traceresponse` does not carry the client's trace id.
"""

import json
import sys

import requests
from opentelemetry import trace
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
RequestsInstrumentor().instrument()

url = sys.argv[1]
with trace.get_tracer("peer").start_as_current_span("peer-call"):
    resp = requests.get(url, timeout=10)

client = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.CLIENT]
assert len(client) == 1, f"one client span expected, got {len(client)}"
ctx = client[0].context
trace_id = format(ctx.trace_id, "032x")
span_id = format(ctx.span_id, "016x")
answer = {
    "trace_id": trace_id,
    "client_span_id": span_id,
    "status": resp.status_code,
    "traceresponse": resp.headers.get("traceresponse", ""),
    "request_id": resp.headers.get("x-request-id", ""),
    "body": resp.text,
}
print(json.dumps(answer))
tr = answer["traceresponse"].split("-")
sys.exit(0 if len(tr) == 4 and tr[1] == trace_id else 1)
