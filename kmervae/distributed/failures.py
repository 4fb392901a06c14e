"""Why a Ray run or trial failed, in one line, found by exception type.

Ray wraps a worker's exception several times before the driver sees it: a Tune trial's error
is a `RayTaskError` whose `cause` is Ray Train's `WorkerGroupError`, whose `worker_failures`
map each rank to the exception it raised (a `TrainingDiverged`, an `InputError`, ...). The
reason a user can act on is the message of that innermost kmervae error; anything else (a
crash of Ray itself) is reported by its last line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from kmervae.base.errors import KmervaeError


def _wrapped(err: BaseException) -> Iterator[BaseException]:
    """The exceptions `err` carries: Ray's task cause, Ray Train's worker and controller
    failures, and Python's chain."""
    yield from (getattr(err, "cause", None), getattr(err, "controller_failure", None))
    yield from (getattr(err, "worker_failures", None) or {}).values()
    yield from (err.__cause__, err.__context__)


def _unwrapped(err: BaseException) -> list[BaseException]:
    """`err` and everything it wraps, outermost first (breadth first, each once)."""
    order, queue, seen = [], [err], set()
    while queue:
        current = queue.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        order.append(current)
        queue.extend(_wrapped(current))
    return order


def kmervae_error(err: BaseException) -> KmervaeError | None:
    """The outermost kmervae error in `err` or anything it wraps, or None."""
    for current in _unwrapped(err):
        # Ray's RayTaskError(X) is also an X, but its message is the whole remote traceback:
        # the clean X is its `cause`, further down the list.
        if isinstance(current, KmervaeError) and getattr(current, "cause", None) is None:
            return current
    return None


def root_cause(err: BaseException) -> str:
    """One line saying why `err` happened: the kmervae error's message (e.g. 'training loss
    became nan; ...'), else the innermost exception's type and last line."""
    found = kmervae_error(err)
    if found is not None:
        return str(found).splitlines()[0]
    innermost = _unwrapped(err)[-1]
    text = last_line(str(innermost))
    return f"{type(innermost).__name__}: {text}" if text else type(innermost).__name__


def _error_names() -> set[str]:
    names, pending = set(), [KmervaeError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return names


def root_cause_of_text(text: str) -> str:
    """The same line from a trial's error file (Tune keeps the traceback as text): the message
    of the last 'module.Class: message' line whose class is a kmervae error, else the last line."""
    # Escaped: Ray makes subclasses such as "RayTaskError(TrainingDiverged)" as it wraps an error.
    names = "|".join(map(re.escape, sorted(_error_names())))
    pattern = re.compile(rf"^(?:[\w.]+\.)?({names}): (.+)$")
    found = [m.group(2) for m in map(pattern.match, text.splitlines()) if m]
    return found[-1] if found else last_line(text)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
