"""The service's Prometheus metrics (``GET /metrics``, text format, via ``prometheus-client``).

One registry per app (not the process-wide default), so two apps in one process never share counts.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self):
        disable_created_metrics()  # no *_created series: one line per metric a scraper reads
        r = self.registry = CollectorRegistry()
        self.requests = Counter("metaaligner_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.request_seconds = Histogram("metaaligner_request_seconds", "time to answer a request, by route",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.policy_seconds = Histogram("metaaligner_policy_seconds", "time of one policy request (retries included)",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.aligner_seconds = Histogram("metaaligner_aligner_seconds",
                                         "time of one aligner call (a batch, or one streamed request)",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("metaaligner_aligner_batch_size", "requests aligned together in one aligner call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.step_rows = Histogram("metaaligner_aligner_step_rows",
                                   "rows the in-process aligner decoded together in one step (continuous batching)",
                                   buckets=BATCH_BUCKETS, registry=r)
        self.tokens = Counter("metaaligner_aligner_generated_tokens", "new tokens the in-process aligner generated",
                              registry=r)
        self.guard_fallbacks = Counter("metaaligner_guard_fallbacks",
                                       "aligned answers the degeneration guard replaced by the original answer",
                                       registry=r)
        self.upstream_errors = Counter("metaaligner_upstream_errors",
                                       "upstream requests that failed for good, by upstream", ["upstream"], registry=r)
        self.rejected = Counter("metaaligner_queue_rejected", "requests refused with 429 (the queue was full)",
                                registry=r)
        self.cancelled = Counter("metaaligner_cancelled", "requests whose client disconnected before the answer",
                                 registry=r)
        self.queue_depth = Gauge("metaaligner_queue_depth", "requests admitted to the aligner (waiting or aligning)",
                                 registry=r)

    def upstream_error(self, role: str) -> None:
        self.upstream_errors.labels(upstream=role).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
