"""The images `dwscan substitute` runs networks on: a labelled folder in ImageNet layout, or the
default smoke set made offline from the one natural photo an installed package ships.

The default set is DEFAULT_N_IMAGES crops and mirror images of matplotlib's sample photo
(`grace_hopper.jpg`): enough to see whether a network still computes the same function, far too
few and too alike to stand for ImageNet (every number is stored with its image count).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dwscan.text import one_line

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG"}
DEFAULT_N_IMAGES = 48
DEFAULT_PHOTO = "grace_hopper.jpg"  # matplotlib's mpl-data/sample_data
# crop side as a share of the photo's shorter side; positions on a 3x3 grid; each also mirrored
_CROP_SCALES = (1.0, 0.8, 0.65, 0.5)


class ImageSetError(Exception):
    """The images cannot be used: a missing, empty or unreadable folder, an unknown class
    folder, an unreadable file. The message is the one-line reason recorded."""


@dataclass
class ImageSet:
    """Images (as loaders, so a large folder is read batch by batch) and their ImageNet labels."""

    sources: list  # Path of a file, or a zero-argument function giving a PIL image
    labels: list[int] | None  # ImageNet class index per image; None: unlabelled
    description: str  # what the set is, for the table and the printed lines

    def __len__(self) -> int:
        return len(self.sources)


def default_image_set(n: int = DEFAULT_N_IMAGES) -> ImageSet:
    """n crops (4 scales x 3x3 positions, cycled) and their mirror images of the sample photo."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / DEFAULT_PHOTO
    boxes = []
    for scale in _CROP_SCALES:
        for row in (0.0, 0.5, 1.0):
            for col in (0.0, 0.5, 1.0):
                if scale < 1.0 or (row, col) == (0.5, 0.5):
                    boxes.append((scale, row, col))
    crops = [(box, flip) for box in boxes for flip in (False, True)][:n]
    return ImageSet([_crop_loader(path, box, flip) for box, flip in crops], None,
                    f"default: {len(crops)} crops and mirror images of matplotlib's "
                    f"{DEFAULT_PHOTO} (one photo; a smoke-scale check, not ImageNet accuracy)")


def _crop_loader(path: Path, box: tuple[float, float, float], flip: bool):
    def load():
        from PIL import Image, ImageOps

        image = Image.open(path).convert("RGB")
        scale, row, col = box
        side = int(min(image.size) * scale)
        left = int((image.width - side) * col)
        top = int((image.height - side) * row)
        crop = image.crop((left, top, left + side, top + side))
        return ImageOps.mirror(crop) if flip else crop
    return load


def labelled_folder(folder: str | Path) -> ImageSet:
    """A folder of class folders (ImageNet layout): each named by its WordNet id (n01440764) or
    its class index (0-999), holding image files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageSetError(f"--images {folder}: not a folder")
    index = _imagenet_index()
    sources, labels = [], []
    try:
        classes = sorted(p for p in folder.iterdir() if p.is_dir())
        for class_dir in classes:
            label = index.get(class_dir.name)
            if label is None:
                raise ImageSetError(f"--images {folder}: class folder {class_dir.name!r} is "
                                    f"neither an ImageNet WordNet id nor a class index 0-999")
            files = sorted(p for p in class_dir.iterdir() if p.suffix in IMAGE_SUFFIXES)
            sources += files
            labels += [label] * len(files)
    except OSError as error:
        raise ImageSetError(f"--images {folder}: unreadable ({one_line(error, 200)})") from None
    if not sources:
        raise ImageSetError(f"--images {folder}: no images in class folders "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    return ImageSet(sources, labels, f"{folder}: {len(sources)} labelled images, "
                                     f"{len(classes)} classes")


def _imagenet_index() -> dict[str, int]:
    from timm.data import ImageNetInfo

    wnids = ImageNetInfo().label_names()
    return {**{w: i for i, w in enumerate(wnids)}, **{str(i): i for i in range(len(wnids))}}


def load_image_set(folder: str | Path | None) -> ImageSet:
    return default_image_set() if folder is None else labelled_folder(folder)


def batches(images: ImageSet, data_config: dict, batch_size: int = 32) -> Iterator:
    """(float tensor batch, label tensor or None) in order, each image through timm's
    evaluation transform for `data_config`."""
    import timm.data
    import torch

    transform = timm.data.create_transform(**data_config)
    for start in range(0, len(images), batch_size):
        chunk = range(start, min(start + batch_size, len(images)))
        tensors = [transform(_open(images.sources[i])) for i in chunk]
        labels = (torch.tensor([images.labels[i] for i in chunk])
                  if images.labels is not None else None)
        yield torch.stack(tensors), labels


def _open(source):
    from PIL import Image

    if callable(source):
        return source()
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise ImageSetError(f"image {source} is unreadable: {one_line(error, 200)}") from None
