"""The session's results: one record per case, speedups against the reference timed in the same
session, and the JSON + markdown files a GPU run commits.

A record is a flat dict (it is also the case's ``benchmark.extra_info``). Keys every record has:
``name`` (pytest node id), ``group`` ("kernel", "model", "cpu"), ``case`` (what is computed, e.g.
``"timit-vrnn-gauss"`` or ``"gmm_nll/blizzard"``), ``mode``, ``precision``, ``provider``,
``reference`` (the provider it is compared with), ``device``, ``median_s``, ``frames``,
``frames_per_s``, ``peak_mem_mib``, ``floor_s``, ``time_over_floor``, and, filled in by
:meth:`Results.link`, ``speedup_vs_reference`` = reference median / this median (> 1: faster) and
``speedup_vs_compiled``, the same against ``reference-compiled`` (torch.compile(ReferenceVRNN)) where it ran.

Op counts (``benchmarks/op_counts.py``: ops and launches per time step, no timing) are kept apart, in
``op_counts``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

_KEY = ("group", "case", "mode", "precision")
COMPILED = "reference-compiled"


def _key(record: dict) -> tuple:
    return tuple(record[k] for k in _KEY)


class Results:
    """Collects records and the cases that did not run; writes JSON + markdown."""

    def __init__(self, meta: dict | None = None):
        self.meta = dict(meta or {})
        self.records: list[dict] = []
        self.not_run: list[dict] = []
        self.op_counts: list[dict] = []

    def add(self, record: dict) -> dict:
        """Store ``record`` (kept by reference: later updates show), derive its rates and link speedups."""
        missing = {"name", "provider", "reference", "median_s", "frames", *_KEY} - set(record)
        if missing:
            raise ValueError(f"record lacks {sorted(missing)}")
        median = record["median_s"]
        record["frames_per_s"] = record["frames"] / median if median else None
        floor = record.get("floor_s")
        record["time_over_floor"] = median / floor if median and floor else None
        self.records.append(record)
        self.link()
        return record

    def link(self) -> None:
        """Set ``speedup_vs_reference`` and ``speedup_vs_compiled`` on every record (None where that case did not
        run in this session)."""
        medians = {(*_key(r), r["provider"]): r["median_s"] for r in self.records}
        for r in self.records:
            for field, other in (("speedup_vs_reference", r["reference"]), ("speedup_vs_compiled", COMPILED)):
                theirs = medians.get((*_key(r), other))
                r[field] = theirs / r["median_s"] if theirs and r["median_s"] else None

    def note_not_run(self, name: str, outcome: str, reason: str) -> None:
        self.not_run.append({"name": name, "outcome": outcome, "reason": reason})

    def to_dict(self) -> dict:
        return {"meta": self.meta, "results": self.records, "op_counts": self.op_counts, "not_run": self.not_run}

    def write(self, json_path: Path) -> None:
        """Write ``json_path`` and the markdown summary beside it (same stem, ``.md``)."""
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(self.to_dict(), indent=1, default=str) + "\n")
        json_path.with_suffix(".md").write_text(self.markdown())

    def markdown(self) -> str:
        """Summary tables: provider rows of one case side by side, speedup and time over floor."""
        m = self.meta
        lines = [f"# vrnn_fast benchmark: {m.get('device_name', '?')}, {m.get('date', '?')}", ""]
        for key in ("device_name", "ceilings", "date", "torch", "triton", "cuda", "cudnn", "driver", "python",
                    "torch_threads", "git_commit", "git_dirty", "finished", "wall_s", "command"):
            if key in m:
                lines.append(f"- {key}: {m[key]}")
        tele = m.get("telemetry_start") or {}
        if tele:
            lines.append("- NVML at start: " + ", ".join(f"{k} {v}" for k, v in tele.items()))
        lines += ["", "speedup = reference median / provider median, both timed in this run (> 1: faster); "
                  "vs compiled: the same against reference-compiled. time/floor = median / roofline floor on the "
                  "ceilings above (benchmarks/roofline.py).", ""]
        order = {"kernel": 0, "model": 1, "cpu": 2}
        groups = sorted({r["group"] for r in self.records}, key=lambda g: order.get(g, 9))
        for group in groups:
            lines += [f"## {group}", "",
                      "| case | mode | precision | provider | median ms | frames/s | peak MiB | speedup | vs compiled "
                      "| time/floor | first call s | SM MHz | W | °C |",
                      "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            rows = [r for r in self.records if r["group"] == group]
            for r in sorted(rows, key=lambda r: (*_key(r), r["provider"] != r["reference"])):
                t = r.get("telemetry") or {}
                lines.append("| " + " | ".join([
                    r["case"], r["mode"], r["precision"], r["provider"], _fmt(r["median_s"], 1e3, 3),
                    _fmt(r["frames_per_s"], 1, 0), _fmt(r.get("peak_mem_mib"), 1, 0),
                    _fmt(r.get("speedup_vs_reference"), 1, 2), _fmt(r.get("speedup_vs_compiled"), 1, 2),
                    _fmt(r.get("time_over_floor"), 1, 1),
                    _fmt(r.get("first_call_s"), 1, 2), _fmt(t.get("sm_clock_mhz"), 1, 0),
                    _fmt(t.get("power_w"), 1, 0), _fmt(t.get("temperature_c"), 1, 0)]) + " |")
            lines.append("")
        launches = [r for r in self.records if r.get("launches")]
        if launches:
            lines += ["## kernel launches per training step (torch.profiler)", "",
                      "| case | precision | provider | kernels | memcpy/memset | host launch calls |",
                      "|---|---|---|---:|---:|---:|"]
            for r in sorted(launches, key=lambda r: (r["case"], r["precision"], r["provider"])):
                n = r["launches"]
                lines.append(f"| {r['case']} | {r['precision']} | {r['provider']} | {n['kernels']} | {n['memops']} "
                             f"| {n['launch_calls']} |")
            lines.append("")
        if self.op_counts:
            lines += _op_count_table(self.op_counts)
        if self.not_run:
            lines += ["## not run", "", "| case | outcome | reason |", "|---|---|---|"]
            for n in self.not_run:
                reason = n["reason"].replace("|", "/").replace("\n", " ")[:200]
                lines.append(f"| {n['name']} | {n['outcome']} | {reason} |")
            lines.append("")
        return "\n".join(lines)


def _op_count_table(counts: list[dict]) -> list[str]:
    p = counts[0]["projection"]
    lines = ["## ops and launches per time step (op_counts.py)", "",
             "aten ops (views excluded) + Triton launches per step of a training iteration (the slope between two "
             "sequence lengths), forward and backward counted apart; syncs: host synchronisations of one forward. "
             f"Projected for the preset's own batch at T = {p['steps']} on the {p['device']} ceilings: the bf16 "
             "floor, and the time the loop's launches alone take (launches per step x T x the assumed cost of "
             "one launch, eager and in a CUDA graph; roofline.launch_time_s).", "",
             "| structure | provider | forward | backward | train | of which Triton | syncs | B | floor ms "
             "| launches ms eager | launches ms graphed |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in counts:
        p = r["projection"]
        lines.append(f"| {r['preset']} | {r['provider']} | {r['forward']['total']:g} | {r['backward']['total']:g} "
                     f"| {r['train']['total']:g} | {r['train']['triton']:g} | {r['forward']['syncs']} | {p['batch']} "
                     f"| {_fmt(p['floor_bf16_s'], 1e3, 3)} | {_fmt(p['launch_eager_s'], 1e3, 2)} "
                     f"| {_fmt(p['launch_graphed_s'], 1e3, 2)} |")
    return [*lines, ""]


def _fmt(value, scale: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value * scale:,.{digits}f}"
