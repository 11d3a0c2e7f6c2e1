"""Image folders streamed through a model: scanning, fingerprinting, the one preprocessing, batches.

A folder of any depth is read one batch at a time, so a folder of 100k images costs the memory of
one batch. Files that cannot be decoded are counted and reported, never fatal: real folders (an
ImageNet val copy, a scrape) always hold a few.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fvexp.errors import Arg, ArgumentError, Setting
from fvexp.optvis.images import SUFFIXES

PREPROCESSING = "rgb, shorter side resized (bicubic, antialiased) to size, centre crop size×size, [0, 1]"


def scan(folder: str | Path, key: str | Arg | Setting = Setting.FOLDER) -> list[Path]:
    """Every image file under `folder`, at any depth, in a stable (sorted) order.

    Symlinks are followed, but each real folder is read once: a link back to a parent folder (a loop)
    or a second link to the same folder adds nothing. Subfolders that cannot be read are skipped
    when others hold images; when none does, the error says which folder could not be read. `key`
    names where the folder came from, for the error message.
    """
    root = Path(folder).expanduser()
    try:
        is_dir = root.is_dir()
    except OSError as error:  # e.g. no permission to look into its parent folder
        raise _unreadable(folder, root, error, key) from None
    if not is_dir:
        raise ArgumentError("{key}={folder!r} is not a folder; point {key} at a folder of images ({suffixes}, at "
                            "any depth), e.g. {key}=/data/imagenet/val", kind="folder", value=str(folder), key=key,
                            folder=str(folder), suffixes=", ".join(sorted(SUFFIXES)))
    files, others, unreadable = [], 0, []
    seen: set[tuple[int, int]] = set()
    for directory, subdirs, names in os.walk(root, onerror=unreadable.append, followlinks=True):
        try:
            stat = os.stat(directory)
        except OSError as error:
            unreadable.append(error)
            subdirs.clear()
            continue
        if (stat.st_dev, stat.st_ino) in seen:  # reached again through a symlink
            subdirs.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        subdirs.sort()
        for name in sorted(names):
            if Path(name).suffix.lower() in SUFFIXES:
                files.append(Path(directory) / name)
            elif not name.startswith("."):
                others += 1
    if not files and unreadable:
        raise _unreadable(folder, root, unreadable[0], key)
    if not files:
        found = f"{others} other file(s) and no image" if others else "nothing"
        raise ArgumentError("{key}={folder!r} holds {found}: fvexp reads {suffixes} files at any depth",
                            kind="folder", value=str(folder), key=key, folder=str(folder), found=found,
                            suffixes=", ".join(sorted(SUFFIXES)))
    return files


def _unreadable(folder: str | Path, root: Path, error: OSError, key: str | Arg | Setting) -> ArgumentError:
    """The error for a folder that cannot be read, naming the subfolder when it is not the folder itself."""
    where = "" if Path(error.filename or root) == root else f" for {error.filename}"
    return ArgumentError("{key}={folder!r} cannot be read ({why}); give fvexp read access to it or choose another "
                         "folder", kind="folder", value=str(folder), key=key, folder=str(folder),
                         why=(error.strerror or str(error)).lower() + where)


def fingerprint(root: Path, files: list[Path]) -> str:
    """A hash of the folder's content by each file's path, size and modification time.

    Reading every byte of a 6 GB folder to check a cache would cost as much as the activations
    themselves; a changed, added or removed file changes its size, time or path, and so the hash.
    """
    digest, root = hashlib.sha256(), root.absolute()
    for file in files:  # `scan` of a relative folder gives relative paths
        stat = file.stat()
        digest.update(f"{file.absolute().relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def preprocess(image: Image.Image, size: int) -> Tensor:
    """The one way a dataset image becomes a (3, size, size) tensor in [0, 1] (see PREPROCESSING)."""
    image = image.convert("RGB")
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (width - size) // 2, (height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


def open_image(file: Path, size: int) -> Tensor | None:
    """The preprocessed image, or None when the file cannot be decoded.

    Images larger than PIL decodes (twice `Image.MAX_IMAGE_PIXELS`, its decompression-bomb guard) are
    not decoded; those between the two limits are, without PIL's warning for each.
    A named pipe or a device is not opened (reading one blocks or never ends): it counts as unreadable.
    """
    if not file.is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                return preprocess(image, size)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


class _Images(Dataset):
    def __init__(self, files: list[Path], size: int) -> None:
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, bool]:
        image = open_image(self.files[index], self.size)
        return (torch.zeros(3, self.size, self.size), False) if image is None else (image, True)


def batches(files: list[Path], size: int, batch_size: int, workers: int) -> Iterable[tuple[Tensor, Tensor]]:
    """(images, readable) batches in file order, decoded by `workers` processes; unreadable files
    come as zeros with readable=False."""
    # Workers decode the next batches while the network runs on this one; on a GPU machine the batches
    # come in pinned memory, so that their copy to the device need not wait for the host.
    return DataLoader(_Images(files, size), batch_size=batch_size, num_workers=workers, shuffle=False,
                      pin_memory=torch.cuda.is_available(), prefetch_factor=4 if workers else None)
