"""Generate the synthetic egocentric world (README: "The synthetic egocentric world"): Ego-Exo4D raw layout,
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

EPILOG = """layout written under --out:
  egoexo4d_v2/metadata/takes.json, annotations/ego_pose/{train,val}/body/{annotation,automatic}/{uid}.json,
  annotations/ego_pose/{train,val}/camera_pose/{uid}.json,
  takes/{uid}/frame_aligned_videos/downscaled/448/aria01_214-1.mp4 (fisheye; the folder is named 448 as in the
  real data whatever --video-size is),
  takes/{uid}/aria01_device_calibration.json: the take's calibration, used in place of the real
  aria01_noimagestreams.vrs: an Aria device-calibration JSON in projectaria-tools' factory-calibration schema
  (load it with projectaria_tools.core.calibration.device_calibration_from_json_string; camera "camera-rgb",
  FISHEYE624) at --calibration-scale times the video resolution, as real calibrations are larger than the
  448 px videos;
  WTour/Walking_Tour_<Name>.mp4; imagefolder/{train,val}/{class}/*.jpg; synthetic_world.json (manifest).
A bouldering take is always added to train (the preprocessing must drop it).

presets (--size):
""" + "\n".join(f"  {name}: {size}" for name, size in PRESETS.items())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data", help="output folder (default: data, the README's paths)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="default", choices=["tiny", "small", "default"],
                   help="preset; the options below override single values of it")
    p.add_argument("--train-takes", type=int)
    p.add_argument("--val-takes", type=int)
    p.add_argument("--frames-per-take", type=int)
    p.add_argument("--video-size", type=int, help="square fisheye video side, px (even)")
    p.add_argument("--calibration-scale", type=int, help="calibration resolution / video resolution")
    p.add_argument("--walks", type=int)
    p.add_argument("--walk-frames", type=int)
    p.add_argument("--walk-width", type=int)
    p.add_argument("--walk-height", type=int)
    p.add_argument("--classes", type=int)
    p.add_argument("--images-per-class", type=int, help="train images per class")
    p.add_argument("--val-images-per-class", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace a synthetic world already in --out")
    p.add_argument("--no-progress", action="store_true")
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
