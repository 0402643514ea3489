"""End-of-run tables: per-attribute count, mean, min and max of the values a job wrote or scored."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def fold(stats: dict[str, list[float]], row: Mapping[str, float]) -> None:
    """Add one row of name → value to per-name [count, sum, min, max]."""
    for name, v in row.items():
        s = stats.get(name)
        if s is None:
            stats[name] = [1, v, v, v]
        else:
            s[0] += 1
            s[1] += v
            s[2] = min(s[2], v)
            s[3] = max(s[3], v)


def merge(stats: dict[str, list[float]], more: Mapping[str, Sequence[float]]) -> None:
    """Add `more` (per-name [count, sum, min, max]) into `stats`."""
    for name, (count, total, low, high) in more.items():
        s = stats.get(name)
        if s is None:
            stats[name] = [count, total, low, high]
        else:
            stats[name] = [s[0] + count, s[1] + total, min(s[2], low), max(s[3], high)]


def stats_of(rows: Iterable[Mapping[str, float]]) -> dict[str, list[float]]:
    """Rows of name → value → name → [count, sum, min, max] (names in first-seen order)."""
    out: dict[str, list[float]] = {}
    for row in rows:
        fold(out, row)
    return out


def stats_table(stats: Mapping[str, Sequence[float]], title: str = "attribute") -> str:
    """A text table with one row per name: n, mean, min, max."""
    if not stats:
        return ""
    width = max(len(title), *(len(n) for n in stats))
    lines = [f"{title:<{width}} {'n':>8} {'mean':>10} {'min':>10} {'max':>10}"]
    for name, (count, total, low, high) in stats.items():
        lines.append(f"{name:<{width}} {int(count):>8} {total / count:>10.4g} {low:>10.4g} {high:>10.4g}")
    return "\n".join(lines)


def stats_json(stats: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """The same figures as a JSON-ready mapping."""
    return {
        name: {"n": int(count), "mean": total / count, "min": low, "max": high}
        for name, (count, total, low, high) in stats.items()
    }
