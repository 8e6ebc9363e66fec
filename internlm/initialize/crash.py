"""How an entry point ends when something fails: one message naming the cause (on stderr and in the log), the
traceback in the rank's log file, the process's children killed (DataLoader workers ignore the stop signals, see
``signals.py``, so nothing else ends them), and the process gone within seconds with a non-zero status, whatever
threads, workers or collectives are still pending. Without this, an exception with loader workers running left the
interpreter waiting for them at exit, forever; on slurm a crashed job sat idle until its time limit."""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
import signal
import sys
import traceback
from typing import Callable, Iterator, Optional

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C: scripts under `set -e` stop too

logger = logging.getLogger(__name__)

# torch.distributed's errors when another rank went away first (its own message says why)
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and contexts, and the per-rank failures a DCP CheckpointException carries."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]
        failures = getattr(e, "failures", None)  # DCP: {rank: (exception, traceback)}
        if isinstance(failures, dict):
            for f in failures.values():
                todo += [x for x in (f if isinstance(f, tuple) else (f,)) if isinstance(x, BaseException)]


def disk_full_in(exc: BaseException) -> Optional[OSError]:
    """The ENOSPC OSError behind ``exc``, if any (torch.save reports it as a RuntimeError whose context it is)."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return e
    return None


def _where(exc: BaseException) -> str:
    """file:line in function of the innermost frame, relative to the working directory when inside it."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    path = os.path.relpath(f.filename) if f.filename.startswith(os.getcwd() + os.sep) else f.filename
    return f" (at {path}:{f.lineno} in {f.name})"


def describe(exc: BaseException, self_explaining: tuple = ()) -> str:
    """One line naming the cause. ``self_explaining`` exception types carry a complete message (what went wrong
    and what to do): only it is shown; others get their type and where they were raised."""
    if isinstance(exc, KeyboardInterrupt):
        return str(exc) or "interrupted (SIGINT)"
    if isinstance(exc, SystemExit):
        return str(exc.code)
    if isinstance(exc, self_explaining):
        return str(exc)
    full = disk_full_in(exc)
    if full is not None:
        return f"no space left on device writing {full.filename or 'a file'}{_where(exc)}"
    text = " ".join(str(exc).split()) or "(no message)"
    if len(text) > 600:
        text = text[:600] + " ..."
    message = f"{type(exc).__name__}: {text}{_where(exc)}"
    if any(s in text for s in _PEER_GONE):
        message = "lost contact with another rank (it probably stopped first: see its message): " + message
    return message


def _log_files() -> list[str]:
    return [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def _traceback_to_log_files(exc: BaseException) -> None:
    record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, "traceback of the failure above", None,
                               (type(exc), exc, exc.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def kill_children() -> None:
    """SIGKILL this process's multiprocessing children (DataLoader workers: they ignore SIGTERM and SIGINT)."""
    for child in multiprocessing.active_children():
        with contextlib.suppress(OSError):
            os.kill(child.pid, signal.SIGKILL)


@contextlib.contextmanager
def exit_on_failure(what: str, rank: int = 0, self_explaining: tuple = (), context: Callable[[], str] = lambda: "",
                    cleanup: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Run the body; any exception (a second Ctrl-C too) ends the process: one line on stderr and in the log
    (``{what} stopped{context()} [rank r]: cause``), the traceback in the log file (on stderr when there is none,
    for unexpected errors), ``cleanup()`` (best effort), children killed, exit status 1 (130 for an interrupt).
    A clean SystemExit passes."""
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 (every way out must end the process)
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        code = EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_FAILED
        logging.raiseExceptions = False  # a log file on a full disk must not add its own traceback
        try:
            where = context()
        except Exception:  # noqa: BLE001 (the context is a courtesy; the failure is what matters)
            where = ""
        line = f"{what} stopped{where}{f' [rank {rank}]' if rank else ''}: {describe(exc, self_explaining)}"
        files = _log_files()
        expected = isinstance(exc, (KeyboardInterrupt, SystemExit) + tuple(self_explaining))
        if files:
            _traceback_to_log_files(exc)
            if not expected:
                line += f"; traceback in {files[-1]}"
        elif not expected:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        _log_line(line)
        kill_children()
        with contextlib.suppress(Exception):
            cleanup()
        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _log_line(line: str) -> None:
    """The message once on stderr and once in each log file (the console handler writes stdout: not there)."""
    record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    print(line, file=sys.stderr, flush=True)
