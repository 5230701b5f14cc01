"""`/metrics` in Prometheus' text format: what an operator graphs and alerts on.

Counted as it happens: requests by route, method and status, with their latency; engine calls with their
duration and size (prompts per call); variants the quality gate dropped, by reason. Read at each scrape: the
queue (running, waiting), file jobs by state, each engine's load time and the tokens it has generated.

Routes are the REST routes' own paths (`/jobs/{job_id}`, never a job's id) and, for everything else, `page`
(the page and its Gradio API), so that the number of series stays fixed whatever clients send.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from app.api_errors import route_path
from app.gate import REASONS

METRICS_PATH = "/metrics"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PAGE = "page"
disable_created_metrics()  # no *_created series: a counter's start is the process's


class Metrics:
    """One app's metrics, on a registry of its own (several apps may live in one process, as in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("dpp_requests", "HTTP requests answered, by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("dpp_request_seconds", "time from a request's arrival to its answer's start",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.engine_seconds = Histogram("dpp_engine_call_seconds", "duration of one engine call", ["engine"],
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_prompts = Histogram("dpp_engine_call_prompts", "prompts in one engine call (dynamic batching "
                                       "joins several requests' prompts)", ["engine"], buckets=BATCH_BUCKETS,
                                       registry=self.registry)
        self.gate_dropped = Counter("dpp_gate_dropped", "variants the quality gate dropped, by reason", ["reason"],
                                    registry=self.registry)
        for reason in REASONS:
            self.gate_dropped.labels(reason)  # every reason shows, at 0 until one is dropped

    def engine_call(self, engine: str, seconds: float, prompts: int) -> None:
        self.engine_seconds.labels(engine).observe(seconds)
        self.batch_prompts.labels(engine).observe(prompts)

    def dropped(self, counts: dict[str, int]) -> None:
        for reason, count in counts.items():
            if count:
                self.gate_dropped.labels(reason).inc(count)

    def watch(self, service, jobs) -> None:
        """Read the queue, the engines and the jobs at each scrape."""
        self.registry.register(_Snapshot(service, jobs))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Snapshot:
    def __init__(self, service, jobs) -> None:
        self.service = service
        self.jobs = jobs

    def describe(self):
        return []  # read at each scrape only: nothing to check at registration

    def collect(self):
        queue = GaugeMetricFamily("dpp_queue_requests", "requests admitted for the model: in an engine call now "
                                  "(running) and waiting", labels=["state"])
        load = self.service.queue()
        queue.add_metric(["running"], load["running"])
        queue.add_metric(["waiting"], load["waiting"])
        yield queue
        yield GaugeMetricFamily("dpp_queue_limit", "most requests that may wait (--max-queue)", value=load["max_queue"])
        loaded = GaugeMetricFamily("dpp_model_load_seconds", "how long each engine took to load", labels=["engine"])
        tokens = CounterMetricFamily("dpp_generated_tokens", "tokens the model engines have generated",
                                     labels=["engine"])
        for name, engine in self.service.engines().items():
            loaded.add_metric([name], engine.info().get("load_seconds", 0.0))
            if hasattr(engine, "generated_tokens"):
                tokens.add_metric([name], engine.generated_tokens)
        yield loaded
        yield tokens
        jobs = GaugeMetricFamily("dpp_jobs", "file jobs by state", labels=["state"])
        for state, count in self.jobs.counts().items():
            jobs.add_metric([state], count)
        yield jobs


class CountRequests:
    """ASGI middleware: each answered request counted by its route, method and status, with its latency;
    `routes`: the REST routes (Starlette routes, whose path templates name them)."""

    def __init__(self, app, metrics: Metrics, routes: list) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = [(route.path_regex, route.path) for route in routes]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._route(route_path(scope))
        started = time.monotonic()
        status = 500  # unless an answer starts: the server then closes the connection

        async def noting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.latency.labels(route).observe(time.monotonic() - started)
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        finally:
            self.metrics.requests.labels(route, scope.get("method", ""), str(status)).inc()

    def _route(self, path: str) -> str:
        """The REST route's path template (`/jobs/{job_id}`), or `page` for the page and Gradio's routes."""
        return next((template for pattern, template in self.routes if pattern.match(path)), PAGE)

