"""What `dmguard demo` prints: its tables, from the benchmark's output, a stream's
outputs, the retrain round and /metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from services.outputs import Outputs, duplicates, output_key
from training.evaluation.benchmark import REENCODED

KEY_METRICS = (
    "dmguard_records_total",
    "dmguard_verdicts_total",
    "dmguard_dead_letters_total",
    "dmguard_model_info",
    "dmguard_workers",
    "dmguard_end_to_end_seconds_count",
)


@dataclass
class StreamResult:
    sent: int
    outputs: Outputs
    expected: set[str]
    seconds: float

    @property
    def lost(self) -> set[str]:
        seen = {output_key(r) for r in self.outputs.verdicts + self.outputs.dead_letters}
        return self.expected - seen


def benchmark_table(out: dict) -> list[str]:
    """The benchmark's headline (overall and people) as the demo prints it: the scores, the
    worst held-out real collection beside the pooled FPR, and the verdict mix."""
    setup = out["setup"]
    lines = [
        f"== leave-source-out benchmark ({setup['images']} images, {setup['folds']} folds, "
        f"{out['seeds']} seed(s); head as v1: {setup['features']}, {setup['loss']} loss; "
        "threshold held on every held-back real collection)",
        f"{'':10} {'AUC':>6} {'TPR@5%FPR':>10} {'FPR@thr':>8} {'TPR@thr':>8} "
        f"{'AUC ' + REENCODED:>15}  real / generated   worst real collection (FPR@thr)",
    ]
    rows = [("overall", out["overall"])] + [
        (c, out["per_content"][c]) for c in ("people",) if c in out["per_content"]
    ]
    for name, b in rows:
        lines.append(
            f"{name:10} {fmt(b['auc']):>6} {fmt(b['tpr_at_5fpr']):>10} "
            f"{fmt(b['fpr_at_threshold']):>8} {fmt(b['tpr_at_threshold']):>8} "
            f"{fmt(b['auc ' + REENCODED]):>15}  {b['n_real']:>4} / {b['n_generated']:<9} "
            f"{b['worst_source'] or '-'} {fmt(b['worst_source_fpr'])}"
        )
    lines.append("verdicts    real photos: real / uncertain / generated    generated: generated")
    for name, b in rows:
        lines.append(
            f"{name:10} {pct(b['real_as_real']):>12} / {pct(b['real_as_uncertain'])} / "
            f"{pct(b['real_as_generated'])}    {pct(b['gen_as_generated']):>22}"
        )
    return lines


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def judged(result: StreamResult, truth: dict[str, dict]) -> dict:
    """Held-out metrics from the verdicts of the records in `truth` (id -> manifest row)."""
    from training.evaluation.evaluate import evaluate

    rows = [(v, truth[v["id"]]) for v in result.outputs.verdicts if v["id"] in truth]
    if not rows:
        return {}
    labels = np.array([int(r["label"]) for _, r in rows])
    scores = np.array([v["score"] for v, _ in rows])
    out = evaluate(labels, scores, rows[0][0]["threshold"], [r["source"] for _, r in rows])
    out["head_versions"] = dict(Counter(v["head_version"] for v, _ in rows))
    return out


def fmt(x) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def stream_table(title: str, result: StreamResult, metrics: dict) -> str:
    lat = [v["latency_ms"] for v in result.outputs.verdicts]
    p50, p95, p99 = np.percentile(lat, [50, 95, 99]) if lat else (float("nan"),) * 3
    codes = Counter(d["error"]["code"] for d in result.outputs.dead_letters)
    lines = [
        f"== {title}",
        f"records in            {result.sent}",
        f"verdicts out          {len(result.outputs.verdicts)}",
        f"dead letters out      {len(result.outputs.dead_letters)}  "
        + ", ".join(f"{c}={n}" for c, n in sorted(codes.items())),
        f"lost / duplicated     {len(result.lost)} / {duplicates(result.outputs)}",
        f"throughput            {len(result.outputs.verdicts) / result.seconds:.1f} images/s "
        f"({result.seconds:.1f} s from first record sent to last output read)",
        f"latency (ms)          p50 {p50:.0f}  p95 {p95:.0f}  p99 {p99:.0f} "
        "(record timestamp to verdict; all records sent at once, so queueing counts)",
    ]
    if metrics:
        lines += [
            f"held-out images       {metrics['n_real']} real, {metrics['n_generated']} generated "
            f"(head {', '.join(f'{k}: {n}' for k, n in metrics['head_versions'].items())})",
            f"AUC                   {fmt(metrics['auc'])}",
            f"accuracy @ threshold  {fmt(metrics['accuracy'])} (threshold {metrics['threshold']:.3f})",
            f"TPR @ 5% FPR          {fmt(metrics['tpr_at_5fpr'])}",
        ]
    return "\n".join(lines)


def metrics_lines(text: str) -> str:
    keep = [line for line in text.splitlines() if line.startswith(KEY_METRICS)]
    return "\n".join(keep)


def retrain_lines(retrain: dict, swap_s: float | None, tolerance: float) -> str:
    lines = ["== retrain from labels"]
    if not retrain.get("trained"):
        return "\n".join(lines + [f"not trained: {retrain.get('reason')}"])
    lines += [
        f"labelled features     {retrain['labelled_features']} (new {retrain['new']})",
        f"new head              {retrain['version']}: held-out AUC {fmt(retrain['new_auc'])} "
        f"vs current {retrain['current_version']} {fmt(retrain['current_auc'])}",
        f"promoted              {retrain['promoted']} ({retrain['reason']}; rule: AUC >= current "
        f"- {tolerance})",
    ]
    if swap_s is not None:
        lines.append(
            f"hot swap              every worker on {retrain['version']} {swap_s:.1f} s after "
            "the labels were sent (no restart)"
        )
    return "\n".join(lines)
