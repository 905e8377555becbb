"""``--metrics-port P``: a Prometheus ``/metrics`` endpoint while a run lasts (issue 15).

prometheus_client's own HTTP server runs in a daemon thread. It never touches the run's
objects: once a second the run builds the metric families in its own (event loop) thread
(:func:`families`, from the same histograms and counters as the summary) and hands them over
(:meth:`MetricsServer.publish`, one reference swap); a scrape returns the last ones. So the
hot path pays nothing, and a scrape never reads a histogram while it is written.

Metrics: ``bulk_requests_total{kind,status}``, ``bulk_request_duration_seconds{kind}`` and
``bulk_stage_duration_seconds{stage}`` (histograms, buckets from the HDR histograms),
``bulk_records_total{outcome}``, ``bulk_retries_total``, ``bulk_throttled_total``,
``bulk_late_starts_total``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from hdrh.histogram import HdrHistogram
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .errors import ConfigError
from .latency import Latency, buckets

__all__ = ["MetricsServer", "families"]

#: histogram bucket bounds, seconds
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _buckets(h: HdrHistogram) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (le, count) pairs and the sum in seconds (each bucket's values counted at its
    middle, as the summary's mean). One pass over the non-empty buckets (bulk.latency.buckets):
    this runs once a second on the run's event loop, so it must not walk every sub-bucket."""
    bounds = [int(b * 1e6) for b in BUCKETS]
    below = [0] * len(bounds)  # values in (bound[i-1], bound[i]]
    i = 0
    weighted = 0
    for low, top, n in buckets(h):  # in increasing value order
        weighted += n * ((low + top + 1) // 2)
        while i < len(bounds) and top > bounds[i]:
            i += 1
        if i < len(bounds):
            below[i] += n
    total = h.get_total_count()
    pairs, running = [], 0
    for bound, n in zip(BUCKETS, below, strict=True):
        running += n
        pairs.append((f"{bound:g}", float(running)))
    pairs.append(("+Inf", float(total)))
    return pairs, weighted / 1e6


def families(latency: Latency, traffic: dict[str, int], records: dict[str, int], late_starts: int) -> list[Metric]:
    requests = CounterMetricFamily("bulk_requests", "HTTP requests by kind and answer status "
                                   "(reset, timeout, refused: transport errors)", labels=["kind", "status"])
    kinds = HistogramMetricFamily("bulk_request_duration_seconds", "request latency by kind", labels=["kind"])
    stages = HistogramMetricFamily("bulk_stage_duration_seconds", "request latency by target stage",
                                   labels=["stage"])
    for key, h in sorted(latency.hist.items()):
        buckets, total = _buckets(h)
        if key in latency.kinds:
            kinds.add_metric([key], buckets, total)
            for code, n in latency.status[key].items():
                requests.add_metric([key, str(code)], n)
        else:
            stages.add_metric([key], buckets, total)
    outcomes = CounterMetricFamily("bulk_records", "records finished by outcome", labels=["outcome"])
    for outcome in ("created", "existing", "rejected", "failed", "uncertain"):
        outcomes.add_metric([outcome], records.get(outcome, 0))
    return [requests, kinds, stages, outcomes,
            CounterMetricFamily("bulk_retries", "requests sent again", value=traffic.get("retries", 0)),
            CounterMetricFamily("bulk_throttled", "429 answers", value=traffic.get("throttled", 0)),
            CounterMetricFamily("bulk_late_starts", "records started late (--arrival-rate)", value=late_starts)]


class _Published(Collector):
    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


class MetricsServer:
    """Serves ``/metrics`` on ``host:port`` (0: a free port, then see :attr:`port`)."""

    def __init__(self, host: str, port: int) -> None:
        self._published = _Published()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self._published)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}): "
                              "give a free port, or 0 for any") from None
        self.host = host
        self.port: int = self._server.server_port

    def publish(self, metrics: Iterable[Metric]) -> None:
        self._published.metrics = list(metrics)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"
