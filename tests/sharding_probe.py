"""One rank of tests/test_parallel_sharding.py: train the tiny stage-2 model (generated data) for ``--steps`` steps in
the parallel mode of ``--zero1`` and write what this rank really holds to ``--out``: its parameters (DTensor
placements and local sizes), its optimizer state (the Adam moments' sizes) and DDP's gradient buckets.

    RANK=r WORLD_SIZE=2 LOCAL_RANK=r MASTER_ADDR=127.0.0.1 MASTER_PORT=p \
        python tests/sharding_probe.py --folder RUN --zero1 '{"size": -1, "fsdp": True}' --out rank{r}.json
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_helpers import tiny_config  # noqa: E402

from internlm.config import parse_override  # noqa: E402
from internlm.initialize.launch import destroy_distributed, init_distributed  # noqa: E402
from internlm.parallel.data_parallel import unwrap  # noqa: E402
from internlm.train.trainer import Trainer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--folder", required=True)
    p.add_argument("--zero1", required=True, help="parallel.zero1, a python literal")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    args = p.parse_args()
    overrides = {"parallel.zero1": ast.literal_eval(args.zero1), **dict(parse_override(o) for o in args.opt)}
    cfg = tiny_config(2, args.folder, steps=args.steps, micro_num=2, accum=1, **overrides)
    trainer = Trainer(cfg, init_distributed("torch", device="cpu"))
    trainer.fit()
    inner = trainer.plan.inner_optimizer(trainer.optimizer)
    params = {}
    for name, param in unwrap(trainer.meta.student).named_parameters():
        local = param.to_local() if hasattr(param, "to_local") else param
        state = inner.state.get(param, {})
        params[name] = {
            "global_numel": param.numel(), "local_numel": local.numel(), "trained": param.requires_grad,
            "placements": [f"Shard({pl.dim})" if pl.is_shard() else type(pl).__name__
                           for pl in getattr(param, "placements", ())],
            "exp_avg_numel": state["exp_avg"].numel() if "exp_avg" in state else 0,
            "exp_avg_local_numel": (state["exp_avg"].to_local() if hasattr(state["exp_avg"], "to_local")
                                    else state["exp_avg"]).numel() if "exp_avg" in state else 0,
        }
    student = trainer.meta.student
    ddp = student._get_ddp_logging_data() if hasattr(student, "_get_ddp_logging_data") else {}
    with open(args.out, "w") as f:
        json.dump({"mode": trainer.plan.mode, "params": params,
                   "ddp_buckets": [int(b) for b in str(ddp.get("rebuilt_bucket_sizes", "")).split(",") if b]}, f)
    destroy_distributed()


if __name__ == "__main__":
    main()
