"""Image data: the Fashion-MNIST IDX files, image folders, specialized tasks and splits.

The built-in benchmark is Fashion-MNIST from Debian's ``dataset-fashion-mnist``
package. Its 60,000 training images are split once, by a fixed seed, into the
50,000 the shipped networks are trained on (``fit``) and 10,000 held out of training
(``heldout``).

A *specialized task* is a subset of classes (``footwear`` = sandal, sneaker, ankle
boot). Its held-out images give a small *preprocessing* split (2 % of the task's
images, as in the VELCRO paper) and a *search* split that chooses thresholds; its test
images are the *validation* split, which only measures. So neither the network nor the
search has seen a validation image, and the network has not been trained on the
images the search measures. An image folder's task is split three ways instead
(:meth:`Task.splits`).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError

FASHION_MNIST_DIR = Path(os.environ.get("VELCRO_FASHION_MNIST",
                                        "/usr/share/datasets/fashion-mnist"))

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

#: Named specialized tasks: class indices of Fashion-MNIST.
TASKS = {
    "footwear": (5, 7, 9),
    "tops": (0, 2, 6, 4),
    "bags": (8,),
    "trousers-dresses": (1, 3),
}

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
#: Training images held out of the shipped networks' training, and the seed choosing them.
HELD_OUT = 10_000
HELD_OUT_SEED = 2024
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
#: Largest image side (pixels) of an image folder, and the largest set it loads.
MAX_SIDE = 4096
MAX_DATASET_BYTES = 4 << 30
_IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                     ".ppm", ".pgm"}


@dataclass(frozen=True)
class Dataset:
    """Images as ``uint8 [N, C, H, W]`` with integer labels and class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(f"images must be uint8 [N, C, H, W], not {self.images.dtype} "
                            f"{list(self.images.shape)}")
        if self.labels.shape != (len(self.images),):
            raise DataError(f"{len(self.labels)} labels for {len(self.images)} images")

    def __len__(self):
        return len(self.images)

    def subset(self, index: np.ndarray) -> Dataset:
        return Dataset(self.images[index], self.labels[index], self.classes)


def read_idx(path: Path, expect_ndim: int) -> np.ndarray:
    """Read one (optionally gzip-compressed) IDX file, checking its header against its size."""
    try:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    if ndim != expect_ndim:
        raise DataError(f"{path}: IDX file has {ndim} dimensions, expected {expect_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: IDX header declares shape {list(shape)} ({expected} bytes) "
                        f"but the file holds {len(raw)} bytes")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def heldout_index(n: int) -> np.ndarray:
    """Sorted indices of the training images held out of training: :data:`HELD_OUT` of
    60,000 (the same sixth of any other count), chosen by :data:`HELD_OUT_SEED`."""
    count = HELD_OUT if n == 60_000 else n // 6
    return np.sort(np.random.default_rng(HELD_OUT_SEED).permutation(n)[:count])


def load_fashion_mnist(split: str = "test", root: Path | None = None) -> Dataset:
    """Load a Fashion-MNIST split as ``uint8 [N, 1, 28, 28]``.

    ``test`` and ``train`` are the IDX files' 10,000 and 60,000 images; ``fit`` (50,000)
    and ``heldout`` (10,000, :func:`heldout_index`) divide ``train`` between the
    shipped networks' training and the tasks' preprocessing and search splits.
    """
    if split in ("fit", "heldout"):
        train = load_fashion_mnist("train", root)
        held = np.zeros(len(train), bool)
        held[heldout_index(len(train))] = True
        return train.subset(np.flatnonzero(held if split == "heldout" else ~held))
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    if split not in _IDX_FILES:
        raise DataError(f"Fashion-MNIST split must be train, fit, heldout or test, "
                        f"not {split!r}")
    image_file, label_file = (root / name for name in _IDX_FILES[split])
    try:
        images = read_idx(image_file, 3)
        labels = read_idx(label_file, 1)
    except FileNotFoundError as e:
        raise DataError(
            f"Fashion-MNIST not found ({e.filename}); install it with "
            "'apt-get install dataset-fashion-mnist' or set VELCRO_FASHION_MNIST to its folder"
        ) from None
    if images.shape[1:] != (28, 28):
        raise DataError(f"{image_file}: images are {list(images.shape[1:])}, expected [28, 28]")
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} images but {len(labels)} labels")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{label_file}: label {int(labels.max())} out of range 0..9")
    return Dataset(images[:, None].copy(), labels.astype(np.int64), FASHION_MNIST_CLASSES)


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``uint8 [N, C, H, W]`` images resized to ``size`` (H, W) by PIL's bilinear filter,
    as image folders are; how the 28x28 Fashion-MNIST images reach networks built for
    64x64."""
    from PIL import Image

    h, w = check_image_size(size)
    if images.shape[2:] == (h, w):
        return images
    out = np.empty((*images.shape[:2], h, w), np.uint8)
    for i, image in enumerate(images):
        for c, plane in enumerate(image):
            out[i, c] = np.asarray(Image.fromarray(plane).resize((w, h), Image.BILINEAR))
    return out


def load_folder(root: Path, channels: int = 3, size: tuple[int, int] | None = None) -> Dataset:
    """Load an ``ImageFolder``-style tree: one sub-folder per class, sorted by name.

    Images are converted to ``channels`` (1: grayscale, 3: RGB) and, when ``size``
    (H, W) is given, resized; otherwise they must all have the same size. Sizes are
    checked before anything is allocated: each side within ``[1, MAX_SIDE]``, every file
    within PIL's decompression-bomb limit, the whole set within ``MAX_DATASET_BYTES``;
    the images are decoded one at a time into one preallocated array.
    """
    index = FolderIndex.scan(root, channels, size)
    return Dataset(index.read(0, len(index), limit=MAX_DATASET_BYTES), index.labels,
                   index.classes)


@dataclass(frozen=True)
class FolderIndex:
    """The files and labels of an image folder, without their pixels.

    Cheap to build and to send to other processes: :meth:`read` decodes any range of
    the images where it is called, so a large folder is processed in batches by
    workers and never held whole in one place (:func:`iter_batches`).
    """

    root: Path
    files: tuple[Path, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    channels: int = 3
    size: tuple[int, int] | None = None

    @classmethod
    def scan(cls, root: Path, channels: int = 3,
             size: tuple[int, int] | None = None) -> FolderIndex:
        """List ``root``: one sub-folder per class, sorted by name (see :func:`load_folder`)."""
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist")
        if channels not in (1, 3):
            raise DataError(f"image folders load 1 or 3 channels, not {channels}")
        if size is not None:
            check_image_size(size)
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not classes:
            raise DataError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
        files = [(label, path) for label, name in enumerate(classes)
                 for path in sorted((root / name).rglob("*"))
                 if path.suffix.lower() in _IMAGE_EXTENSIONS and path.is_file()]
        if not files:
            raise DataError(f"{root} holds no images")
        # Absolute: workers elsewhere (another folder, a node sharing the file system)
        # read the same files.
        return cls(root, tuple(path.absolute() for _, path in files),
                   np.asarray([label for label, _ in files], dtype=np.int64), tuple(classes),
                   channels, size)

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, index: np.ndarray) -> FolderIndex:
        """The images at ``index`` (like :meth:`Dataset.subset`), still undecoded."""
        index = np.asarray(index, dtype=np.int64)
        return FolderIndex(self.root, tuple(self.files[i] for i in index), self.labels[index],
                           self.classes, self.channels, self.size)

    def read(self, start: int, stop: int, limit: int | None = None) -> np.ndarray:
        """Images ``start:stop`` as ``uint8 [n, C, H, W]``, decoded one at a time into
        one preallocated array (at most ``limit`` bytes, checked before allocating)."""
        import warnings

        from PIL import Image, UnidentifiedImageError

        files = self.files[start:stop]
        images = None
        for i, path in enumerate(files):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(path) as img:
                        if images is None:
                            h, w = self.size if self.size is not None else (img.height,
                                                                            img.width)
                            check_image_size((h, w), what=f"{path}: image size")
                            total = len(files) * self.channels * h * w
                            if limit is not None and total > limit:
                                raise DataError(
                                    f"{self.root}: {len(files)} images of {self.channels}x"
                                    f"{h}x{w} need {total / 2**30:.1f} GiB, more than the "
                                    f"{limit / 2**30:.0f} GiB limit; pass a smaller "
                                    "--image-size or fewer images")
                            images = np.empty((len(files), self.channels, h, w), np.uint8)
                        img = img.convert("L" if self.channels == 1 else "RGB")
                        if self.size is not None:
                            img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
                        array = np.asarray(img, dtype=np.uint8)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise DataError(f"{path}: too large to decode safely ({e})") from None
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise DataError(f"{path}: not a readable image ({e})") from None
            array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
            if array.shape != images.shape[1:]:
                raise DataError(f"{path}: size {list(array.shape[1:])} differs from "
                                f"{list(images.shape[2:])}; pass --image-size H,W to resize")
            images[i] = array
        if images is None:
            h, w = self.size or (0, 0)
            images = np.empty((0, self.channels, h, w), np.uint8)
        return images


@dataclass(frozen=True)
class IdxImages:
    """The images of an IDX file (Fashion-MNIST's), read a range at a time.

    Like :class:`FolderIndex` it names the data instead of holding it: :meth:`read`
    decompresses the file up to the range asked for and keeps only that range.
    """

    path: Path
    count: int
    shape: tuple[int, ...]

    @classmethod
    def open(cls, path: Path) -> IdxImages:
        """Check the header of a 3-dimensional uint8 IDX file (images ``[N, H, W]``)."""
        path = Path(path)
        try:
            with _open_idx(path) as f:
                header = f.read(16)
        except FileNotFoundError:
            raise DataError(f"{path} does not exist") from None
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: cannot read IDX file ({e})") from None
        if len(header) < 16 or header[:4] != bytes([0, 0, 0x08, 3]):
            raise DataError(f"{path}: not a 3-dimensional uint8 IDX file")
        n, h, w = (int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(3))
        return cls(path.absolute(), n, (1, h, w))

    @classmethod
    def fashion_mnist(cls, split: str = "train", root: Path | None = None) -> IdxImages:
        """The images of a Fashion-MNIST split (see :func:`load_fashion_mnist`)."""
        if split not in _IDX_FILES:
            raise DataError(f"Fashion-MNIST split must be 'train' or 'test', not {split!r}")
        return cls.open((Path(root) if root is not None else FASHION_MNIST_DIR)
                        / _IDX_FILES[split][0])

    def __len__(self) -> int:
        return self.count

    def read(self, start: int, stop: int) -> np.ndarray:
        """Images ``start:stop`` as ``uint8 [n, 1, H, W]``."""
        return next(self.batches(start, stop, max(stop - start, 1)), self._empty())

    def batches(self, start: int, stop: int, size: int):
        """Images ``start:stop`` in batches of ``size``, reading the file once."""
        start, stop = max(0, start), min(stop, self.count)
        item = int(np.prod(self.shape))
        try:
            with _open_idx(self.path) as f:
                f.seek(16 + start * item)
                for first in range(start, stop, size):
                    n = min(size, stop - first)
                    raw = f.read(n * item)
                    if len(raw) != n * item:
                        raise DataError(f"{self.path}: truncated at image {first}")
                    yield np.frombuffer(raw, np.uint8).reshape(n, *self.shape).copy()
        except (OSError, EOFError) as e:
            raise DataError(f"{self.path}: cannot read IDX file ({e})") from None

    def _empty(self) -> np.ndarray:
        return np.empty((0, *self.shape), np.uint8)


def _open_idx(path: Path):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def iter_batches(source, start: int, stop: int, size: int):
    """Images ``start:stop`` of ``source`` in batches of ``size``: an array
    ``uint8 [N, C, H, W]``, or a lazy source (:class:`FolderIndex`, :class:`IdxImages`)
    that reads each batch only when it is needed."""
    if hasattr(source, "batches"):
        yield from source.batches(start, stop, size)
        return
    for first in range(start, stop, size):
        last = min(first + size, stop)
        yield source[first:last] if isinstance(source, np.ndarray) else source.read(first, last)


def check_image_size(size, what: str = "--image-size") -> tuple[int, int]:
    """``(H, W)`` if both sides are whole numbers in ``[1, MAX_SIDE]``; else a DataError."""
    h, w = size
    if not all(isinstance(v, int | np.integer) and 1 <= v <= MAX_SIDE for v in (h, w)):
        raise DataError(f"{what} must be H,W with each side in [1, {MAX_SIDE}], not {h},{w}")
    return int(h), int(w)


@dataclass(frozen=True)
class Splits:
    """Disjoint index arrays into a task's images."""

    preprocessing: np.ndarray
    search: np.ndarray
    validation: np.ndarray


@dataclass(frozen=True)
class Task:
    """A specialized task: the images of some classes, split three ways."""

    name: str
    classes: tuple[int, ...]
    data: Dataset | FolderIndex
    preprocessing_fraction: float = 0.02
    seed: int = 0
    #: Validation images (indices into ``data``) fixed in advance, for a Fashion-MNIST
    #: task (its test images); None: :meth:`splits` splits all of ``data``.
    validation: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self):
        if len(self.data) == 0:
            raise DataError(f"task {self.name!r} has no images (classes {list(self.classes)})")
        if not 0 < self.preprocessing_fraction < 1:
            raise DataError(f"preprocessing fraction must be in (0, 1), "
                            f"not {self.preprocessing_fraction}")

    def splits(self) -> Splits:
        """Deterministic split: preprocessing (<= 2 % of the task's images), search and
        validation.

        With fixed ``validation`` images the other images are permuted into
        preprocessing and search; otherwise all images are, and the rest after
        preprocessing is halved into search and validation. The permutation depends only
        on the seed and the number of images, so the same task always yields the same
        splits.
        """
        n = len(self.data)
        n_pre = max(1, int(np.floor(self.preprocessing_fraction * n)))
        if self.validation is not None:
            rest = np.setdiff1d(np.arange(n), self.validation)
            if len(rest) < n_pre + 1 or len(self.validation) == 0:
                raise DataError(f"task {self.name!r} has {len(rest)} images outside its "
                                f"{len(self.validation)} validation images; {n_pre + 1} "
                                "are needed for preprocessing and search")
            order = rest[np.random.default_rng(self.seed).permutation(len(rest))]
            return Splits(np.sort(order[:n_pre]), np.sort(order[n_pre:]),
                          np.sort(self.validation))
        if n < 3:
            raise DataError(f"task {self.name!r} has {n} images; at least 3 are needed to "
                            "split it into preprocessing, search and validation")
        order = np.random.default_rng(self.seed).permutation(n)
        n_search = (n - n_pre) // 2
        return Splits(np.sort(order[:n_pre]), np.sort(order[n_pre:n_pre + n_search]),
                      np.sort(order[n_pre + n_search:]))

    def split(self, name: str) -> Dataset | FolderIndex:
        """One split's images (a :class:`FolderIndex`, undecoded, for a lazy task)."""
        return self.data.subset(getattr(self.splits(), name))


def parse_classes(text: str, classes: tuple[str, ...]) -> tuple[int, ...]:
    """Parse ``"5,7,9"`` or class names into class indices, checking the range."""
    result = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if item.lstrip("-").isdigit():
            index = int(item)
        elif item in classes:
            index = classes.index(item)
        else:
            raise DataError(f"unknown class {item!r}; classes are 0..{len(classes) - 1} "
                            f"or one of {', '.join(classes)}")
        if not 0 <= index < len(classes):
            raise DataError(f"class {index} out of range 0..{len(classes) - 1}")
        if index not in result:
            result.append(index)
    if not result:
        raise DataError(f"empty class list {text!r}")
    return tuple(result)


def make_task(name: str | None = None, classes: str | None = None, data: Path | None = None,
              channels: int = 1, size: tuple[int, int] | None = None,
              lazy: bool = False) -> Task:
    """Build a task from a task name, a class list, or an image folder.

    With ``data`` (an image folder) the task is its ``classes`` (default: all of them);
    ``size`` resizes its images, or the Fashion-MNIST images (:func:`resize_images`);
    otherwise a named Fashion-MNIST task or the ``classes`` list, whose preprocessing and
    search images are held-out training images and whose validation images are test
    images (see the module docstring).
    ``lazy`` leaves a folder's images undecoded: the task's data is a
    :class:`FolderIndex`, for workers that read their own share.
    """
    if data is not None:
        dataset = (FolderIndex.scan(data, channels, size) if lazy
                   else load_folder(data, channels=channels, size=size))
    else:
        pool, test = load_fashion_mnist("heldout"), load_fashion_mnist("test")
        dataset = Dataset(np.concatenate([pool.images, test.images]),
                          np.concatenate([pool.labels, test.labels]), test.classes)
    if classes is not None:
        picked = parse_classes(classes, dataset.classes)
        label = name or "classes-" + "-".join(str(c) for c in picked)
    elif name is not None:
        if data is not None:
            raise DataError("--task names a Fashion-MNIST task; with --data use --classes")
        if name not in TASKS:
            raise DataError(f"unknown task {name!r}; tasks are {', '.join(TASKS)} "
                            "(or pass --classes)")
        picked, label = TASKS[name], name
    elif data is not None:
        picked, label = tuple(range(len(dataset.classes))), Path(data).name
    else:
        raise DataError("give --task, --classes or --data")
    selected = np.flatnonzero(np.isin(dataset.labels, picked))
    validation, chosen = None, dataset.subset(selected)
    if data is None:
        validation = np.flatnonzero(selected >= len(pool))
        if size is not None:
            chosen = Dataset(resize_images(chosen.images, size), chosen.labels, chosen.classes)
    return Task(label, picked, chosen, validation=validation)


def to_float(images: np.ndarray):
    """``uint8`` images to a float32 tensor in [0, 1], the reference model's input."""
    import torch

    return torch.from_numpy(images.astype(np.float32) / 255.0)
