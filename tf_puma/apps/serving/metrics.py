"""The Prometheus page of `tf-puma serve` (REST port, /monitoring/prometheus/metrics, the path
TF Serving's monitoring config uses): predict requests by model and status code, their latency
histogram, secure calls made (fewer than requests when batching packs them), each model's rounds
and bytes per secure call (from its manifest), and whether each party answers (checked when the
page is read, at most every 5 s)."""

from __future__ import annotations

import bisect
import threading
import time
from typing import TYPE_CHECKING

from tf_puma.cluster import NUM_PARTIES, PartyUnavailable, check_party

if TYPE_CHECKING:
    from tf_puma.apps.serving.models import ModelRegistry

PATH = "/monitoring/prometheus/metrics"
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HEALTH_EVERY_S = 5.0


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}
        self.buckets: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = {}
        self._health: tuple[float, list[int]] = (0.0, [])

    def observe(self, model: str, code: str, seconds: float) -> None:
        with self._lock:
            self.requests[(model, code)] = self.requests.get((model, code), 0) + 1
            counts = self.buckets.setdefault(model, [0] * (len(LATENCY_BUCKETS_S) + 1))
            counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
            self.latency_sum[model] = self.latency_sum.get(model, 0.0) + seconds

    def _party_up(self, registry: "ModelRegistry") -> list[int]:
        checked_at, up = self._health
        if time.monotonic() - checked_at < HEALTH_EVERY_S and up:
            return up
        up = []
        for i, address in enumerate(registry.cluster.parties):
            try:
                check_party(i, address, 1.0)
                up.append(1)
            except PartyUnavailable:
                up.append(0)
        self._health = (time.monotonic(), up)
        return up

    def render(self, registry: "ModelRegistry") -> str:
        lines = ["# HELP tf_puma_serving_requests_total Predict requests by model and status.",
                 "# TYPE tf_puma_serving_requests_total counter"]
        with self._lock:
            for (model, code), n in sorted(self.requests.items()):
                lines.append(f'tf_puma_serving_requests_total{{model="{model}",code="{code}"}} {n}')
            lines += ["# HELP tf_puma_serving_request_latency_seconds Predict latency.",
                      "# TYPE tf_puma_serving_request_latency_seconds histogram"]
            for model, counts in sorted(self.buckets.items()):
                total = 0
                for bound, n in zip((*LATENCY_BUCKETS_S, "+Inf"), counts):
                    total += n
                    lines.append(f'tf_puma_serving_request_latency_seconds_bucket{{model="{model}",'
                                 f'le="{bound}"}} {total}')
                lines.append(f'tf_puma_serving_request_latency_seconds_sum{{model="{model}"}} '
                             f"{self.latency_sum[model]:.6f}")
                lines.append(f'tf_puma_serving_request_latency_seconds_count{{model="{model}"}} '
                             f"{total}")
        lines += ["# HELP tf_puma_serving_secure_calls_total Secure calls run for a model.",
                  "# TYPE tf_puma_serving_secure_calls_total counter",
                  "# HELP tf_puma_serving_rounds_per_call Rounds on a call's critical path.",
                  "# TYPE tf_puma_serving_rounds_per_call gauge",
                  "# HELP tf_puma_serving_bytes_per_call Bytes a sender sends per call.",
                  "# TYPE tf_puma_serving_bytes_per_call gauge"]
        for servable in registry.all():
            labels = f'model="{servable.name}",version="{servable.version}"'
            lines.append(f"tf_puma_serving_secure_calls_total{{{labels}}} {servable.calls}")
            lines.append(f"tf_puma_serving_rounds_per_call{{{labels}}} "
                         f"{servable.manifest.total.rounds}")
            for sender, sent in sorted(servable.manifest.total.bytes_by_sender.items()):
                lines.append(f'tf_puma_serving_bytes_per_call{{{labels},sender="{sender}"}} '
                             f"{sent}")
        lines += ["# HELP tf_puma_party_up Whether the party answers TensorFlow's protocol.",
                  "# TYPE tf_puma_party_up gauge"]
        for i, up in enumerate(self._party_up(registry)[:NUM_PARTIES]):
            lines.append(f'tf_puma_party_up{{party="{i}"}} {up}')
        return "\n".join(lines) + "\n"
