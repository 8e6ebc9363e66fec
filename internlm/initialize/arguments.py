"""Command-line conventions shared by the entry points: the launch options, and a parser for the scripts.

Options are documented with underscores (``--take_uids``); the hyphenated spelling (``--take-uids``) is accepted
too, and ``--help`` shows every default.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from internlm.config import ConfigError, load_config, parse_override

from .launch import DEFAULT_RENDEZVOUS_TIMEOUT_S, LAUNCHERS


def add_launch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--launcher", choices=LAUNCHERS, default=None,
                   help="slurm: under srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST); "
                        "torch: under torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); "
                        "omitted: torchrun's variables if set, else one process")
    p.add_argument("--port", type=int, default=None,
                   help="rendezvous port of rank 0 (default 29500); ignored, with a notice, where the environment "
                        "already set one: under torchrun (its --master_port) or with MASTER_PORT exported")
    p.add_argument("--rendezvous_timeout", type=float, default=DEFAULT_RENDEZVOUS_TIMEOUT_S, metavar="SECONDS",
                   help="how long the ranks wait for each other at start-up before stopping with a message naming "
                        "the address and port")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")


def add_config_args(p: argparse.ArgumentParser, config_help: str = "a python config file") -> None:
    """--config and the repeatable --opt KEY=VALUE of train.py, for the scripts that read a training config."""
    p.add_argument("--config", required=True, help=config_help)
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --opt model.flavor=tiny (repeatable; what follows it is logged, "
                        "docs/configs.md; default: none)")


def config_from_args(args: argparse.Namespace, extra: Sequence[tuple] = (), notices: Optional[list] = None):
    """The config of --config with --opt (and ``extra`` overrides); a config error ends the script with its message.
    What followed the overrides is appended to ``notices``."""
    try:
        return load_config(args.config, [parse_override(o) for o in args.opt] + list(extra), notices)
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each option's default (unless its help already says it, or the option
    is required)."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or action.required:
            return action.help
        return super()._get_help_string(action)


class ScriptArgumentParser(argparse.ArgumentParser):
    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(**kwargs)

    def parse_args(self, args: Optional[Sequence[str]] = None, namespace=None):
        return super().parse_args(_underscored(args), namespace)

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace=None):
        return super().parse_known_args(_underscored(args), namespace)


def _underscored(args: Optional[Sequence[str]]) -> list[str]:
    """``--take-uids=a`` -> ``--take_uids=a``; values and positionals are left alone."""
    import sys

    out = []
    for a in sys.argv[1:] if args is None else args:
        if a.startswith("--") and len(a) > 2:
            name, eq, value = a[2:].partition("=")
            a = "--" + name.replace("-", "_") + eq + value
        out.append(a)
    return out
