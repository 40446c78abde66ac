"""A strict reader of the Prometheus text format (0.0.4), for the metrics tests.

Stricter than Prometheus itself on what wsgiloop promises: every sample's family has one HELP and
one TYPE line before its first sample; names and labels are well formed; no series appears
twice; a family's samples are contiguous; a histogram's buckets have ascending ``le`` bounds
ending in ``+Inf``, counts that never decrease, and ``_count`` equal to the ``+Inf`` bucket, with
a ``_sum`` beside; counters are not negative.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"')
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}

Labels = frozenset[tuple[str, str]]


class FormatError(AssertionError):
    pass


def parse(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample, by (name, labels); raises ``FormatError`` on the first broken rule."""
    if not text.endswith("\n"):
        raise FormatError("the exposition must end with a newline")
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    samples: dict[tuple[str, Labels], float] = {}
    finished: set[str] = set()
    current: str | None = None
    order: dict[str, list[tuple[str, Labels, float]]] = defaultdict(list)
    for number, line in enumerate(text.splitlines(), 1):
        where = f"line {number}: {line!r}"
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            if not _NAME.fullmatch(name) or name in helps or not help_text:
                raise FormatError(f"bad or repeated HELP: {where}")
            helps[name] = help_text
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            if name in types or kind not in _TYPES or name not in helps:
                raise FormatError(f"bad or repeated TYPE (HELP first): {where}")
            if name in order:
                raise FormatError(f"TYPE after the family's samples: {where}")
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            raise FormatError(f"unexpected line: {where}")
        name, labels, value = _sample(line, where)
        family = _family_of(name, types)
        if family is None:
            raise FormatError(f"sample without HELP/TYPE: {where}")
        if family != current:
            if family in finished:
                raise FormatError(f"family {family} is not contiguous: {where}")
            if current is not None:
                finished.add(current)
            current = family
        key = (name, labels)
        if key in samples:
            raise FormatError(f"duplicate series: {where}")
        if types[family] == "counter" and value < 0:
            raise FormatError(f"negative counter: {where}")
        samples[key] = value
        order[family].append((name, labels, value))
    for family, kind in types.items():
        if kind == "histogram":
            _check_histogram(family, order[family])
    return samples


def _sample(line: str, where: str) -> tuple[str, Labels, float]:
    match = _NAME.match(line)
    if not match:
        raise FormatError(f"bad metric name: {where}")
    name = match.group()
    rest = line[match.end():]
    labels: list[tuple[str, str]] = []
    if rest.startswith("{"):
        end = rest.find("}")
        body = rest[1:end]
        pos = 0
        while pos < len(body):
            label = _LABEL.match(body, pos)
            if not label:
                raise FormatError(f"bad label: {where}")
            labels.append((label.group(1), label.group(2)))
            pos = label.end()
            if pos < len(body):
                if body[pos] != ",":
                    raise FormatError(f"bad label separator: {where}")
                pos += 1
        rest = rest[end + 1:]
        if len({k for k, _ in labels}) != len(labels):
            raise FormatError(f"repeated label: {where}")
    if not rest.startswith(" "):
        raise FormatError(f"no value: {where}")
    parts = rest[1:].split(" ")
    if len(parts) not in (1, 2):
        raise FormatError(f"bad value: {where}")
    try:
        value = float(parts[0])
    except ValueError:
        raise FormatError(f"bad value: {where}") from None
    return name, frozenset(labels), value


def _family_of(name: str, types: dict[str, str]) -> str | None:
    if name in types:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and types.get(name[: -len(suffix)]) == "histogram":
            return name[: -len(suffix)]
    return None


def _check_histogram(family: str, samples: list[tuple[str, Labels, float]]) -> None:
    series: dict[Labels, dict[str, object]] = defaultdict(lambda: {"buckets": []})
    for name, labels, value in samples:
        suffix = name[len(family):]
        if suffix == "_bucket":
            le = dict(labels).get("le")
            if le is None:
                raise FormatError(f"{family}: bucket without le")
            rest = frozenset(item for item in labels if item[0] != "le")
            series[rest]["buckets"].append((math.inf if le == "+Inf" else float(le), value))  # type: ignore[attr-defined]
        elif suffix in ("_sum", "_count"):
            series[labels][suffix] = value
        else:
            raise FormatError(f"{family}: a histogram has only _bucket, _sum, _count: {name}")
    for labels, parts in series.items():
        buckets: list[tuple[float, float]] = parts["buckets"]  # type: ignore[assignment]
        if not buckets or buckets[-1][0] != math.inf:
            raise FormatError(f"{family}{set(labels)}: the last bucket must be +Inf")
        bounds = [b for b, _ in buckets]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise FormatError(f"{family}{set(labels)}: le bounds must ascend")
        counts = [c for _, c in buckets]
        if any(later < earlier for earlier, later in itertools.pairwise(counts)):
            raise FormatError(f"{family}{set(labels)}: buckets must be cumulative")
        if "_count" not in parts or "_sum" not in parts:
            raise FormatError(f"{family}{set(labels)}: _sum and _count are required")
        if parts["_count"] != counts[-1]:
            raise FormatError(f"{family}{set(labels)}: _count must equal the +Inf bucket")


def value(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float:
    """One sample's value; labels must match exactly."""
    return samples[(name, frozenset(labels.items()))]


def total(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)
