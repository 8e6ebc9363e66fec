"""How much does what is in view decide the next half second of the synthetic world, given enough data? The scene
oracle of the motion evaluation (siMLPe + the privileged scene truth at the last input frame) against siMLPe, both
trained on the clips of many simulated takes (poses only: no rendering, seconds per take) and tested on others.

eval_3dposes.py measures the same ceiling on the demo's own 10 training takes, where it is bounded by what a model
can learn from them; this tool measures the world's: the clips, pose frame (the clip's first camera) and scene truth
are those of the generator's takes (internlm/data/synthetic/body.py, privileged.py), the models and training those
of tools/train_motion_baseline.py.

    python tools/diagnose_scene_ceiling.py --train_takes 200 --test_takes 20 [--steps 3000] [--out ceiling.json]
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from internlm.data.synthetic.body import simulate
from internlm.data.synthetic.privileged import scene_truth
from internlm.data.synthetic.scene import random_scene
from internlm.eval.motion import CLIP_FRAMES, HORIZON, INPUT_FRAMES, MotionErrorSums, paired_mpjpe_difference
from internlm.eval.motion_oracles import condition_dim
from internlm.initialize.arguments import ScriptArgumentParser
from internlm.model.simlpe import SiMLPeConfig
from internlm.train.motion_baseline import train_simlpe

CLIP_START_EVERY = 5


def simulated_clips(seed: int, takes: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> joints (N, 20, 17, 3) in each clip's first camera frame; the scene truth at its last input frame (N, C)."""
    joints, truth = [], []
    for k in range(takes):
        rng = np.random.default_rng([seed, k])
        motion = simulate(random_scene(rng), rng, frames)
        features = scene_truth(motion)
        for start in range(0, frames - CLIP_FRAMES + 1, CLIP_START_EVERY):
            cam = motion.cam_to_world[start]
            joints.append((motion.joints[start:start + CLIP_FRAMES] - cam[:3, 3]) @ cam[:3, :3])  # world -> camera
            truth.append(features[start + INPUT_FRAMES - 1])
    return torch.tensor(np.array(joints), dtype=torch.float32), torch.tensor(np.array(truth), dtype=torch.float32)


def main(argv=None) -> int:
    p = ScriptArgumentParser(description=__doc__)
    p.add_argument("--train_takes", type=int, default=200)
    p.add_argument("--test_takes", type=int, default=20)
    p.add_argument("--frames", type=int, default=300, help="frames per take (the demo world's)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--seed", type=int, default=1000, help="simulation streams: seed (train) and seed + 1 (test)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    t0 = time.time()
    train_x, train_c = simulated_clips(args.seed, args.train_takes, args.frames)
    test_x, test_c = simulated_clips(args.seed + 1, args.test_takes, args.frames)
    print(f"{len(train_x)} training / {len(test_x)} test clips simulated in {time.time() - t0:.0f}s")
    passes = HORIZON // (CLIP_FRAMES // 4)
    train_v, test_v = (torch.ones(x.shape[:3], dtype=torch.bool) for x in (train_x, test_x))
    per_clip, result = {}, {"train_clips": len(train_x), "test_clips": len(test_x), "args": vars(args)}
    for name, kind in (("simlpe", ""), ("scene_oracle", "scene")):
        cfg = SiMLPeConfig(blocks=args.blocks, condition_dim=condition_dim(kind) if kind else 0, condition=kind)
        cond = (lambda c: c[:, None].expand(-1, passes, -1)) if kind else (lambda c: None)  # noqa: E731
        model, losses = train_simlpe(train_x, train_v, INPUT_FRAMES, args.steps, cfg=cfg, condition=cond(train_c),
                                     seed=args.seed)
        with torch.no_grad():
            pred = model(test_x[:, :INPUT_FRAMES], test_v[:, :INPUT_FRAMES], HORIZON, cond(test_c))
        sums = MotionErrorSums()
        per_clip[name] = sums.add(pred, test_x, test_v)
        result[name] = {"mpjpe_30fps": sums.summary()["mpjpe_30fps"], "final_train_loss": float(np.mean(losses[-50:]))}
    result["simlpe_minus_scene_oracle"] = paired_mpjpe_difference(per_clip["simlpe"], per_clip["scene_oracle"])
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
