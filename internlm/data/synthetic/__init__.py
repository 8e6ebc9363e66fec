"""The synthetic egocentric world (docs/synthetic_world.md): the project's default data when the
real data is absent.

``generate_world(out_dir, seed, size)`` (or ``dataset_preprocess/make_synthetic_egoworld.py``) writes, under
``out_dir`` (``--out data`` gives the README's default paths), the Ego-Exo4D tree as the downloader writes it:
  egoexo4d_v2/takes.json                         (root_dir takes/{take_name}; capture.cameras names the Aria device)
  egoexo4d_v2/annotations/ego_pose/{train,val}/body/{annotation,automatic}/{take_uid}.json
  egoexo4d_v2/annotations/ego_pose/{train,val}/camera_pose/{take_uid}.json
  egoexo4d_v2/takes/{take_name}/frame_aligned_videos/downscaled/448/{aria}_214-1.mp4
      (fisheye, 30 fps; the folder keeps the real data's name "448" although the synthetic video is smaller;
      {aria} is aria01, or aria02 for one take, as in real captures)
  egoexo4d_v2/takes/{take_name}/{aria}_device_calibration.json
      the take's calibration in place of the real {aria}_noimagestreams.vrs: an Aria device-calibration JSON
      (projectaria-tools' factory-calibration schema, written by device_calibration_to_json_string, read by
      device_calibration_from_json_string) whose "camera-rgb" is a FISHEYE624 camera at a LARGER resolution
      than the video (size.calibration_scale times), like the real data, so consumers must rescale it.
  WTour/Walking_Tour_<Name>.mp4        WalkingTours-style walks, pinhole, 30 fps, no poses
  imagefolder/{train,val}/{class}/*.jpg   place recognition for the kNN evaluation (held-out courtyards)
  synthetic_world.json                  the manifest: seed, sizes, takes (uid, name, split, frame counts)
All formats are those of egoexo_format (see its docstring). World: z up, metres. Camera frames: x right,
y down, z forward; the video is stored upright (no 90-degree Aria sensor rotation).
"""

from .sizes import PRESETS, WorldSize, resolve_size
from .world import TakeSpec, TakeWorld, build_take, generate_world, load_manifest, plan_takes, summary_lines

__all__ = ["PRESETS", "WorldSize", "resolve_size", "TakeSpec", "TakeWorld", "build_take", "generate_world",
           "load_manifest", "plan_takes", "summary_lines"]
