"""Write evaluation results: ``results.json`` (everything), ``results.md`` (a table), ``results.png`` (bars).

Every file is written to a temporary name in the output directory and moved into place with ``os.replace``,
so a reader never sees a half-written report.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from lmlab.io.atomic import atomic_write_bytes
from lmlab.io.output_paths import umask_mode


def _fmt(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "—"
        return f"{x:.4g}" if abs(x) >= 1e4 else f"{x:.4f}"
    return str(x)


def metric_rows(results: dict) -> list[tuple[str, str, float | None, float | None, int, bool | None]]:
    """(task, metric, value, stderr, n_docs, higher_is_better) for every reported metric."""
    rows = []
    for task, vals in results["results"].items():
        hib = results.get("higher_is_better", {}).get(task, {})
        for name, value in vals.items():
            if name.endswith("_stderr"):
                continue
            rows.append((task, name, value, vals.get(f"{name}_stderr"), results.get("n_docs", {}).get(task, 0),
                         hib.get(name)))
    return rows


def to_markdown(results: dict) -> str:
    model = results.get("model", {})
    lines = ["# Evaluation results", ""]
    if model:
        lines.append(f"Model `{model.get('class', '')}` fingerprint `{model.get('fingerprint', '')}`, "
                     f"{model.get('n_parameters', 0):,} parameters"
                     + (f", hooks: {', '.join(model['active_hooks'])}" if model.get("active_hooks") else "") + ".")
    cfg = results.get("config", {})
    if cfg:
        lines.append("Run: " + ", ".join(f"{k}={v}" for k, v in cfg.items() if v is not None) + ".")
    lines += ["", "| Task | Metric | Value | ± stderr | n | better |", "|---|---|---:|---:|---:|:-:|"]
    for task, name, value, se, n, hib in metric_rows(results):
        arrow = "↑" if hib else "↓" if hib is not None else ""
        lines.append(f"| {task} | {name} | {_fmt(value)} | {_fmt(se)} | {n} | {arrow} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """One figure, one panel per task, one bar per metric with its standard error.

    Drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas), never through pyplot's global state."""
    from matplotlib.figure import Figure

    tasks = list(results["results"])
    n = max(len(tasks), 1)
    fig = Figure(figsize=(max(4.0, 3.2 * n), 3.4))
    axes = fig.subplots(1, n, squeeze=False)
    rows = metric_rows(results)
    for ax, task in zip(axes[0], tasks or [""]):
        mine = [(m, v, s) for t, m, v, s, _, _ in rows if t == task]
        names = [m for m, _, _ in mine]
        values = [v if v is not None else 0.0 for _, v, _ in mine]
        errs = [s if s is not None else 0.0 for _, _, s in mine]
        ax.bar(range(len(names)), values, yerr=errs, capsize=3, color="#4C72B0")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{task} (n={results.get('n_docs', {}).get(task, 0)})", fontsize=9)
        if values and max(values) > 1e3:
            ax.set_yscale("log")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_report(results: dict, out_dir: str | os.PathLike, *, samples: bool = True, png: bool = True) -> dict[str, Path]:
    """Write results.json / results.md / results.png into ``out_dir``; returns the paths written.

    ``samples=False`` leaves the per-document records out of results.json."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    data = dict(results)
    if not samples:
        data.pop("samples", None)
    paths = {"json": d / "results.json", "markdown": d / "results.md"}
    atomic_write_bytes(paths["json"], (json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode())
    atomic_write_bytes(paths["markdown"], to_markdown(results).encode())
    if png:
        paths["png"] = d / "results.png"
        plot(results, paths["png"])
    return paths
