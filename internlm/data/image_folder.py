"""ImageFolder (root/class_name/**/image): ImgNetDINO multi-crop training and the kNN evaluation.

Classes are the sorted sub-folders of root, samples the image files under each (sorted, recursive), as
torchvision's ImageFolder orders them. Paths are kept in one numpy bytes array (no per-path Python
objects, so forked workers do not copy them).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from .bad_samples import BadSampleError, KnownBadFiles
from .transforms import IMAGENET_MEAN, IMAGENET_STD, Normalizer, resize_center_crop
from .video import IMAGE_EXTENSIONS, DecodedImage, largest_reduction, read_image


class ImageFolderIndex:
    """Implements the FrameLocator protocol of walking_tours (len, name, load, image_files) over an image folder."""

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder {root} does not exist (expected {root}/CLASS/IMAGE.jpg)")
        self.root = root
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if not self.classes:
            loose = sum(e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) for e in os.scandir(root))
            hint = (f" but {loose} images directly in it: sort them into one sub-folder per class first (ImageNet's "
                    "val/ comes flat, e.g. ILSVRC2012_val_00000001.JPEG: move each image into the folder of its "
                    "class, as the valprep.sh of PyTorch's ImageNet example does)") if loose else ""
            raise ValueError(f"image folder {root} has no class sub-folders (expected {root}/CLASS/IMAGE){hint}")
        paths, targets = [], []
        for label, name in enumerate(self.classes):
            for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), followlinks=True):
                dirnames.sort()
                for fname in sorted(filenames):
                    if fname.lower().endswith(IMAGE_EXTENSIONS):
                        paths.append(os.path.join(dirpath, fname))
                        targets.append(label)
        if not paths:
            raise ValueError(f"image folder {root} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.paths = np.array([p.encode() for p in paths])  # (N,) bytes
        self.targets = np.asarray(targets, np.int64)  # (N,)

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, i: int) -> str:
        return self.paths[i].decode()

    def load(self, i: int, reduction_for=None) -> DecodedImage:
        return read_image(self.name(i), reduction_for)

    def image_files(self, i: int) -> list[str]:
        return [self.name(i)]


class ImageFolderEval(Dataset):
    """Image i -> (FloatTensor (3, crop, crop), class index): shorter side to ``resize``, center ``crop``.

    An undecodable image is replaced by a random one (warning with its file name), like the training sets.
    """

    def __init__(self, root: str, resize: int = 256, crop: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 normalize: bool = True):
        self.index = ImageFolderIndex(root)
        self.classes, self.targets = self.index.classes, self.index.targets
        self.resize, self.crop = resize, crop
        self.normalizer = Normalizer(normalize, mean, std)
        self.bad_files = KnownBadFiles(f"ImageFolder {root}")

    def __len__(self) -> int:
        return len(self.index)

    def _reduction(self, source_hw: tuple[int, int]) -> int:
        return largest_reduction(min(source_hw), self.resize)  # the shorter side becomes ``resize`` pixels

    def _load(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.index.load(i, self._reduction)
        try:
            return resize_center_crop(image.rgb, self.resize, self.crop, self.normalizer), int(self.targets[i])
        except ValueError as err:
            raise BadSampleError(self.index.name(i), str(err)) from None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        item, _, _ = self.bad_files.load_with_replacement(self._load, int(i), len(self), 0, int(i),
                                                          self.index.image_files)
        return item
