"""One way to run a function over tasks in worker processes (preprocessing scripts, the synthetic world)."""

from __future__ import annotations

from multiprocessing import get_context
from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_in_processes(fn: Callable[[T], R], tasks: Sequence[T], workers: int, ordered: bool = False) -> Iterator[R]:
    """``fn(task)`` for every task: in this process when ``workers <= 1`` or there is one task, else in a forked
    pool of ``workers`` processes (results in completion order unless ``ordered``). The pool is closed and joined
    when the caller finishes or abandons the iteration."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(fn, tasks)
        return
    pool = get_context("fork").Pool(workers)  # fork: workers inherit the imported modules, no re-import
    try:
        yield from (pool.imap if ordered else pool.imap_unordered)(fn, tasks)
    finally:
        pool.close()
        pool.join()
