"""Print the parameter counts of a config: backbone + projectors (the paper's model size) and the heads.

    python tools/count_params.py --config configs/joint_train/lr6e-04_tmp004_300m.py [--opt model.flavor=1B]

Nothing is allocated: the model is built on the meta device.
"""

from internlm.initialize.arguments import ScriptArgumentParser, add_config_args, config_from_args
from internlm.model.param_count import count_parameters, human


def main(argv=None) -> None:
    parser = ScriptArgumentParser(description=__doc__)
    add_config_args(parser)
    args = parser.parse_args(argv)
    notices: list[str] = []
    cfg = config_from_args(args, notices=notices)
    for notice in notices:
        print(f"config: {notice}")
    c = count_parameters(cfg.model, cfg.loss.is_joint)
    print(f"config:                  {args.config} (stage {cfg.stage})")
    print(f"backbone + projectors:   {human(c.model)}  ({c.model:,})")
    print(f"  backbone:              {c.backbone:,}")
    print(f"  projectors + queries:  {c.projectors:,}")
    print(f"heads (not counted):     {human(c.heads)}  ({c.heads:,})")


if __name__ == "__main__":
    main()
