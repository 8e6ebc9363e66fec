"""Write a checkpoint of an untrained EgoAgent (the initialisation of a config and seed): the "no learning"
reference the demo report puts next to the trained models.

    python tools/make_untrained_checkpoint.py --config configs/demo/stage2_joint_tiny.py --seed 0 --out DIR
           [--opt KEY=VALUE ...]   (the same overrides as the training run it stands beside)
"""


from internlm.checkpoint import save_weights_only
from internlm.initialize.arguments import ScriptArgumentParser, add_config_args, config_from_args
from internlm.model import EgoAgent
from internlm.train.trainer import seed_everything


def main(argv=None) -> None:
    p = ScriptArgumentParser(description=__doc__)
    add_config_args(p)
    p.add_argument("--seed", type=int, default=0, help="the initialisation (train.py --seed)")
    p.add_argument("--out", required=True, help="run folder; the checkpoint is written as step 0")
    args = p.parse_args(argv)
    notices: list[str] = []
    cfg = config_from_args(args, extra=[("data.seed", args.seed)], notices=notices)
    for notice in notices:
        print(f"config: {notice}")
    seed_everything(args.seed)  # the same initialisation train.py starts from
    model = EgoAgent(cfg.model, joint=cfg.loss.is_joint)
    folder = save_weights_only(args.out, model, model, cfg, step=0)
    print(f"untrained weights of {args.config} (seed {args.seed}) written to {folder}")


if __name__ == "__main__":
    main()
