"""virsh's output formats: its column table, its ``--tree`` drawing, its ``Key:  value`` lines.

Reproduced from virsh's own layout rules (vshTable, vshTreePrint), so scripts that read virsh
output read qsnap's too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from typing import Any

    from qsnap.progress import Progress


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], header: bool = True) -> str:
    """A virsh table: each cell is `` cell``, padded two past its column's widest cell, and a
    dashed line as wide as the sum of the column widths plus three each."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            parts.append(f" {cell}")
            if i < len(cells) - 1:
                parts.append(" " * (widths[i] - len(cell) + 2))
        return "".join(parts) + "\n"

    out = []
    if header:
        out.append(line(headers))
        out.append("-" * sum(w + 3 for w in widths) + "\n")
    out.extend(line(row) for row in rows)
    return "".join(out)


def tree(roots: Sequence[str], children: Callable[[str], Sequence[str]]) -> str:
    """virsh's ``--tree`` drawing of every root and its descendants."""
    out: list[str] = []

    def draw(name: str, indent: str, is_root: bool, is_last: bool) -> None:
        out.append(f"{indent}{'' if is_root else '+- '}{name}\n")
        if not is_root:
            indent += (" " if is_last else "|") + " "
        kids = children(name)
        if kids:
            out.append(f"{indent}  |\n")
        for i, kid in enumerate(kids):
            draw(kid, indent + "  ", False, i == len(kids) - 1)
        if not kids and is_last:
            out.append(f"{indent}\n")

    for root in roots:
        draw(root, "", True, True)
    return "".join(out)


def key_values(pairs: Sequence[tuple[str, object]]) -> str:
    """``Name:           value`` lines (the label padded to 15 columns, as virsh does)."""
    return "".join(f"{label + ':':<15} {value}\n" for label, value in pairs)


def local_time(seconds: int) -> str:
    """A creation time as virsh shows it: local time with the UTC offset."""
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(seconds))


def job_percent(done: int, total: int) -> int:
    """virsh's block job percentage: 100 only once nothing remains."""
    if total <= 0 or done >= total:
        return 100
    return min(int(100 - (total - done) * 100 / total), 99)


def pretty_size(count: int) -> str:
    """virsh's ``--human`` sizes: ``1.500 GiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.3f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def job_info(job: dict[str, Any] | None) -> str:
    """virsh domjobinfo's layout for a job on the board (None: no job)."""
    if job is None:
        return f"{'Job type:':<17} {'None':<12}\n"
    lines = [f"{'Job type:':<17} {str(job['type']).capitalize():<12}",
             f"{'Operation:':<17} {job['operation']!s:<12}",
             f"{'Time elapsed:':<17} {int(float(job['elapsed']) * 1000):<12} ms"]
    if job.get("seconds_left") is not None and job["type"] != "completed":
        lines.append(f"{'Time remaining:':<17} {int(float(job['seconds_left']) * 1000):<12} ms")
    if "total" in job:
        lines += [f"{'Data processed:':<17} {pretty_size(int(job['processed']))}",
                  f"{'Data remaining:':<17} {pretty_size(int(job['remaining']))}",
                  f"{'Data total:':<17} {pretty_size(int(job['total']))}"]
        if job.get("rate"):
            lines.append(f"{'Data bandwidth:':<17} {pretty_size(int(job['rate']))}/s")
    return "".join(f"{line}\n" for line in lines)


def _size(count: float) -> str:
    if count < 1024:
        return f"{int(count)} B"
    for unit in ("KiB", "MiB"):
        count /= 1024
        if count < 1024:
            return f"{count:.1f} {unit}"
    return f"{count / 1024:.1f} GiB"


def progress_line(operation: str, done: int, total: int, rate: float,
                  remaining: float | None) -> str:
    """One terminal line: ``merge vda: o3 into o2  12.0 MiB / 40.0 MiB  30.1 MiB/s  1 s left``."""
    left = "" if remaining is None else f"  {remaining:.0f} s left"
    return (f"{operation}  {_size(done)} / {_size(total)}  {_size(rate)}/s{left}")


def progress_event(report: Progress) -> str:
    """One line of JSON for automation: the operation, bytes done and in all, the rate in
    bytes per second, and the seconds left (null before there is a rate)."""
    return json.dumps({"event": "progress", "operation": report.operation,
                       "done": report.done, "total": report.total,
                       "rate": round(report.rate), "remaining":
                       None if report.remaining is None else round(report.remaining, 1),
                       "elapsed": round(report.elapsed, 3)})


def json_text(value: Any, extra: Callable[[Any], dict[str, Any]] | None = None) -> str:
    """``--json`` output: a dataclass (or a list of them) as an indented JSON object (array),
    each object with *extra*'s keys added."""
    from dataclasses import asdict
    def one(item: Any) -> dict[str, Any]:
        return {**asdict(item), **(extra(item) if extra else {})}

    data = [one(item) for item in value] if isinstance(value, list) else one(value)
    return json.dumps(data, indent=2) + "\n"
