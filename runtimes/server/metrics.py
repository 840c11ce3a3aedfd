"""Prometheus metrics with text-embeddings-inference's names, in the text exposition format.

TEI exports ``te_request_count`` and friends without the ``_total`` suffix that prometheus_client adds to every
counter, so dashboards written for TEI would not find prometheus_client's names; this small registry writes the
exposition itself (counters, gauges, histograms with labels; thread-safe). Every series carries a ``model``
label (the bundle's served name) where it belongs to one bundle.
"""
from __future__ import annotations

import threading
from bisect import bisect_left

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
EFFICIENCY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
TOKEN_BUCKETS = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

# name -> (type, help, buckets)
DEFINITIONS = {
    "te_request_count": ("counter", "requests received (method: single or batch input)", None),
    "te_request_success": ("counter", "requests answered with 200", None),
    "te_request_failure": ("counter", "requests answered with an error, by error type (err)", None),
    "te_embed_count": ("counter", "inputs (texts or pairs) received", None),
    "te_embed_success": ("counter", "inputs answered", None),
    "te_queue_size": ("gauge", "sequences waiting in the engine queue", None),
    "te_request_input_length": ("histogram", "tokens per input", TOKEN_BUCKETS),
    "te_request_duration": ("histogram", "seconds per answered request", DURATION_BUCKETS),
    "te_request_tokenization_duration": ("histogram", "seconds of tokenization per request", DURATION_BUCKETS),
    "te_request_queue_duration": ("histogram", "seconds a request waited for its first batch", DURATION_BUCKETS),
    "te_request_inference_duration": ("histogram", "seconds from a request's first batch to its last",
                                      DURATION_BUCKETS),
    "te_batch_next_size": ("histogram", "rows per engine batch", SIZE_BUCKETS),
    "te_batch_next_tokens": ("histogram", "padded tokens per engine batch", TOKEN_BUCKETS),
    "te_batch_inference_duration": ("histogram", "seconds per engine batch", DURATION_BUCKETS),
    "bge_batch_padding_efficiency": ("histogram", "real tokens / padded tokens per engine batch",
                                     EFFICIENCY_BUCKETS),
    "bge_batch_real_tokens": ("counter", "real (unpadded) tokens the engine ran", None),
    "bge_batch_padded_tokens": ("counter", "padded tokens the engine ran (real tokens / this: the padding "
                                           "efficiency over any interval)", None),
    "bge_inputs_dropped": ("counter", "queued sequences dropped because their client went away", None),
    "bge_inputs_in_flight": ("gauge", "inputs holding a --max-concurrent-requests permit", None),
}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _labels(labels: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _render_labels(labels: tuple, extra: tuple = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    esc = (lambda v: v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"'))
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in pairs) + "}"


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple, float]] = {name: {} for name in DEFINITIONS}
        self._hists: dict[str, dict[tuple, list]] = {}

    def inc(self, name: str, by: float = 1, **labels) -> None:
        key = _labels(labels)
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0) + by

    def set(self, name: str, value: float, **labels) -> None:
        with self._lock:
            self._values[name][_labels(labels)] = value

    def observe(self, name: str, value: float, **labels) -> None:
        buckets = DEFINITIONS[name][2]
        key = _labels(labels)
        with self._lock:
            series = self._hists.setdefault(name, {})
            counts = series.get(key)
            if counts is None:
                counts = series[key] = [0] * (len(buckets) + 1) + [0.0]  # per bucket, +Inf, then the sum
            counts[bisect_left(buckets, value)] += 1
            counts[-1] += value

    # --- what the engine worker reports -------------------------------------------------------------------
    def queue_size(self, model: str, size: int) -> None:
        self.set("te_queue_size", size, model=model)

    def batch(self, model: str, rows: int, tokens: int, seconds: float, real: int | None = None) -> None:
        """One engine batch: its rows, its padded ``tokens``, its time, and its ``real`` tokens where known."""
        self.observe("te_batch_next_size", rows, model=model)
        self.observe("te_batch_next_tokens", tokens, model=model)
        self.observe("te_batch_inference_duration", seconds, model=model)
        if real is not None:
            self.observe("bge_batch_padding_efficiency", real / max(1, tokens), model=model)
            self.inc("bge_batch_real_tokens", real, model=model)
            self.inc("bge_batch_padded_tokens", tokens, model=model)

    def dropped(self, model: str) -> None:
        self.inc("bge_inputs_dropped", model=model)

    # --- exposition ------------------------------------------------------------------------------------------
    def render(self) -> str:
        lines = []
        with self._lock:
            for name, (kind, text, buckets) in DEFINITIONS.items():
                lines.append(f"# HELP {name} {text}")
                lines.append(f"# TYPE {name} {kind}")
                if kind != "histogram":
                    for key, value in sorted(self._values[name].items()):
                        lines.append(f"{name}{_render_labels(key)} {_number(value)}")
                    continue
                for key, counts in sorted(self._hists.get(name, {}).items()):
                    cumulative = 0
                    for bound, count in zip(list(buckets) + ["+Inf"], counts[:-1]):
                        cumulative += count
                        lines.append(f"{name}_bucket{_render_labels(key, (('le', str(bound)),))} {cumulative}")
                    lines.append(f"{name}_sum{_render_labels(key)} {counts[-1]:.6f}")
                    lines.append(f"{name}_count{_render_labels(key)} {cumulative}")
        return "\n".join(lines) + "\n"
