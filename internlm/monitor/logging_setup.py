"""Rank-aware logging: rank 0 logs INFO to the console (and a file), other ranks only warnings."""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

FORMAT = "%(asctime)s %(levelname)s [rank{rank}] %(name)s: %(message)s"


def setup_logging(rank: int = 0, log_file: Optional[str] = None, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_egoagent", False):
            root.removeHandler(handler)
    formatter = logging.Formatter(FORMAT.format(rank=rank), datefmt="%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    console.setLevel(level if rank == 0 else logging.WARNING)
    console._egoagent = True
    root.addHandler(console)
    if log_file is not None:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(formatter)
        file_handler.setLevel(level)
        file_handler._egoagent = True
        root.addHandler(file_handler)
    root.setLevel(min(level, logging.INFO))
