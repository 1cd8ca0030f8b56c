"""Fashion-MNIST, offline (Debian's `dataset-fashion-mnist` idx files) or from the Hugging Face Hub."""

from __future__ import annotations

import gzip
import os

import numpy as np
import torch

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_SPLIT_PREFIXES = {"train": "train", "test": "t10k"}

# idx magic numbers: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801


def _check_split(split: str) -> str:
    if split not in _SPLIT_PREFIXES:
        raise ValueError(f"`split` must be one of {sorted(_SPLIT_PREFIXES)}, got {split!r}.")
    return _SPLIT_PREFIXES[split]


def _read_idx(path: str, magic: int) -> np.ndarray:
    """Read an unsigned-byte idx file (optionally gzipped) into an array of the shape its header declares."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    found_magic = int.from_bytes(data[:4], "big")
    if found_magic != magic:
        raise ValueError(
            f"{path} is not an idx file of the expected kind: magic {found_magic:#010x}, expected {magic:#010x}."
        )
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f"{path} holds {len(data) - offset} bytes of data, its header declares shape {shape}.")
    # copy: `frombuffer` views the immutable `bytes`, and torch wants writable arrays
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape).copy()


def load_fashion_mnist(split: str = "train", data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    r"""
    Load a Fashion-MNIST split from its original idx files.

    Args:
        split (`str`, *optional*, defaults to `"train"`):
            `"train"` (60,000 images) or `"test"` (10,000 images).
        data_dir (`str`, *optional*):
            Folder with `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`; defaults to [`FASHION_MNIST_DIR`], where
            Debian's `dataset-fashion-mnist` package installs them.

    Returns:
        `tuple(np.ndarray, np.ndarray)`: the images, `uint8` of shape `(N, 28, 28)`, and the labels, `int64` of shape
        `(N,)`.
    """
    prefix = _check_split(split)
    data_dir = FASHION_MNIST_DIR if data_dir is None else data_dir

    def find(name: str) -> str:
        for candidate in (os.path.join(data_dir, name + ".gz"), os.path.join(data_dir, name)):
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(
            f"Fashion-MNIST file {os.path.join(data_dir, name + '.gz')} not found. Install it with "
            "`apt-get install dataset-fashion-mnist`, pass the folder holding the idx files, or use the Hub dataset "
            "(`load_fashion_mnist_from_hub`, `--dataset_name zalando-datasets/fashion_mnist`)."
        )

    images = _read_idx(find(f"{prefix}-images-idx3-ubyte"), _IDX_IMAGES_MAGIC)
    labels = _read_idx(find(f"{prefix}-labels-idx1-ubyte"), _IDX_LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{data_dir}: {len(images)} {split} images but {len(labels)} labels.")
    return images, labels


def load_fashion_mnist_from_hub(
    split: str = "train", dataset_name: str = "zalando-datasets/fashion_mnist", cache_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""
    Load a Fashion-MNIST split from the Hugging Face Hub with `datasets` (needs network access or a warm cache).

    Args:
        split (`str`, *optional*, defaults to `"train"`):
            `"train"` or `"test"`.
        dataset_name (`str`, *optional*, defaults to `"zalando-datasets/fashion_mnist"`):
            A Hub dataset with an `image` column (28x28 grayscale PIL images) and a `label` column.
        cache_dir (`str`, *optional*):
            Where `datasets` caches the download.

    Returns:
        `tuple(np.ndarray, np.ndarray)`: as [`load_fashion_mnist`].
    """
    _check_split(split)
    from datasets import load_dataset

    dataset = load_dataset(dataset_name, split=split, cache_dir=cache_dir)
    images = np.stack([np.asarray(image.convert("L"), dtype=np.uint8) for image in dataset["image"]])
    labels = np.asarray(dataset["label"], dtype=np.int64)
    return images, labels


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    r"""
    Convert `uint8` images of shape `(N, H, W)` to a float tensor of shape `(N, 1, H, W)` in [-1, 1] (model space).
    """
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"`images` must be uint8 of shape (N, H, W), got {images.dtype} of shape {images.shape}.")
    return torch.from_numpy(np.array(images, copy=True)).unsqueeze(1).float().div(127.5).sub(1.0)


def pad_images(images: np.ndarray, size: int) -> np.ndarray:
    r"""
    Pad `uint8` images `(N, H, W)` centrally to `(N, size, size)` with black (0; -1 in model space, Fashion-MNIST's
    background), e.g. 28×28 Fashion-MNIST to the 32×32 of an autoencoder with three blocks. Nothing is resized: images
    larger than `size` are a `ValueError`. An odd difference puts the extra row / column at the bottom / right.
    """
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"`images` must be uint8 of shape (N, H, W), got {images.dtype} of shape {images.shape}.")
    height, width = images.shape[1:]
    if height > size or width > size:
        raise ValueError(
            f"`size` {size} is smaller than the images ({height}x{width}); images are padded, never resized or "
            "cropped."
        )
    top, left = (size - height) // 2, (size - width) // 2
    return np.pad(images, ((0, 0), (top, size - height - top), (left, size - width - left)), constant_values=0)
