"""Generate the synthetic egocentric world (docs/synthetic_world.md): Ego-Exo4D raw layout,
WalkingTours-style walks and an ImageFolder set, deterministic from --seed.

  python dataset_preprocess/make_synthetic_egoworld.py --out data --seed 0            # the default size
  python dataset_preprocess/make_synthetic_egoworld.py --out /tmp/w --size tiny --seed 1

Then: python dataset_preprocess/undistort_egovideos.py --root data/egoexo4d_v2
      python dataset_preprocess/preprocess_egoexo_body_pose.py --root data/egoexo4d_v2 --out data/egoexo4d_body_pose
"""

from __future__ import annotations

import argparse
import os
import sys

from internlm.data.synthetic import PRESETS, generate_world, resolve_size, summary_lines
from internlm.initialize.arguments import ScriptArgumentParser

EPILOG = """layout written under --out (the Ego-Exo4D part as the downloader writes it):
  egoexo4d_v2/takes.json (part metadata; root_dir takes/{take_name}),
  annotations/ego_pose/{train,val}/body/{annotation,automatic}/{uid}.json, annotations/ego_pose/{train,val}/
  camera_pose/{uid}.json (part annotations),
  takes/{take_name}/frame_aligned_videos/downscaled/448/{aria}_214-1.mp4 (part downscaled_takes/448; fisheye; the
  folder is named 448 as in the real data whatever --video_size is; {aria} is aria01, aria02 for one take),
  takes/{take_name}/{aria}_device_calibration.json: the take's calibration, used in place of the real
  {aria}_noimagestreams.vrs: an Aria device-calibration JSON in projectaria-tools' factory-calibration schema
  (load it with projectaria_tools.core.calibration.device_calibration_from_json_string; camera "camera-rgb",
  FISHEYE624) at --calibration_scale times the video resolution, as real calibrations are larger than the
  448 px videos;
  WTour/Walking_Tour_<Name>.mp4; imagefolder/{train,val}/{class}/*.jpg; synthetic_world.json (manifest).
A bouldering take is always added to train (the preprocessing must drop it).

presets (--size):
""" + "\n".join(f"  {name}: {size}" for name, size in PRESETS.items())


def parse_args(argv=None) -> argparse.Namespace:
    p = ScriptArgumentParser(description=__doc__.split("\n\n")[0], epilog=EPILOG)
    p.add_argument("--out", default="data", help="output folder (default: data, the README's paths)")
    p.add_argument("--seed", type=int, default=0, help="the world is a function of (seed, size)")
    p.add_argument("--size", default="default", choices=["tiny", "small", "default"],
                   help="preset; the options below override single values of it")
    p.add_argument("--train_takes", type=int, help="default: the --size preset's")
    p.add_argument("--val_takes", type=int, help="default: the --size preset's")
    p.add_argument("--frames_per_take", type=int, help="default: the --size preset's")
    p.add_argument("--video_size", type=int, help="square fisheye video side, px (even) (default: the --size preset's)")
    p.add_argument("--calibration_scale", type=int,
                   help="calibration resolution / video resolution (default: the --size preset's)")
    p.add_argument("--walks", type=int, help="default: the --size preset's")
    p.add_argument("--walk_frames", type=int, help="default: the --size preset's")
    p.add_argument("--walk_width", type=int, help="default: the --size preset's")
    p.add_argument("--walk_height", type=int, help="default: the --size preset's")
    p.add_argument("--classes", type=int, help="default: the --size preset's")
    p.add_argument("--images_per_class", type=int, help="train images per class (default: the --size preset's)")
    p.add_argument("--val_images_per_class", type=int, help="default: the --size preset's")
    p.add_argument("--image_size", type=int, help="default: the --size preset's")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace a synthetic world already in --out")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    size = resolve_size(args.size, **{k: getattr(args, k) for k in (
        "train_takes", "val_takes", "frames_per_take", "video_size", "calibration_scale", "walks", "walk_frames",
        "walk_width", "walk_height", "classes", "images_per_class", "val_images_per_class", "image_size")})
    manifest = generate_world(args.out, args.seed, size, workers=args.workers, overwrite=args.overwrite,
                              progress=not args.no_progress)
    print("\n".join(summary_lines(args.out, manifest)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
