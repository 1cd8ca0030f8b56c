import gzip
import os

import numpy as np
import pytest
import torch

from diffusers_scorevae.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    images_to_tensor,
    load_fashion_mnist,
)


def write_idx(path, array, magic):
    """Write a uint8 array as a gzipped idx file."""
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_fashion_mnist(directory, num_train=64, num_test=16, seed=0):
    """A synthetic Fashion-MNIST folder in the original file format; returns the arrays it holds."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    arrays = {}
    for split, prefix, n in (("train", "train", num_train), ("test", "t10k", num_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), images, 0x803)
        write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels, 0x801)
        arrays[split] = (images, labels)
    return arrays


def test_load_synthetic(tmp_path):
    arrays = write_fashion_mnist(tmp_path)
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(split, str(tmp_path))
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        np.testing.assert_array_equal(images, arrays[split][0])
        np.testing.assert_array_equal(labels, arrays[split][1])


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", str(tmp_path))


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", str(tmp_path))


def test_bad_magic(tmp_path):
    write_fashion_mnist(tmp_path)
    labels = np.zeros(64, dtype=np.uint8)
    write_idx(os.path.join(tmp_path, "train-images-idx3-ubyte.gz"), labels, 0x801)
    with pytest.raises(ValueError, match="magic"):
        load_fashion_mnist("train", str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="dataset-fashion-mnist is not installed")
def test_real_files():
    train_images, train_labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    assert train_images.shape == (60000, 28, 28) and train_labels.shape == (60000,)
    assert test_images.shape == (10000, 28, 28) and test_labels.shape == (10000,)
    assert set(np.unique(test_labels)) == set(range(len(FASHION_MNIST_CLASSES)))


def test_images_to_tensor():
    images = np.array([[[0, 255], [51, 204]]], dtype=np.uint8)
    tensor = images_to_tensor(images)
    assert tensor.shape == (1, 1, 2, 2) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor, torch.tensor([[[[-1.0, 1.0], [-0.6, 0.6]]]]))
    assert len(FASHION_MNIST_CLASSES) == 10
