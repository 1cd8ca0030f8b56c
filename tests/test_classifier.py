import os
import sys

import torch
from test_data import write_fashion_mnist

from diffusers_scorevae.models.classifier import FashionMNISTClassifier

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import train_classifier  # noqa: E402


def test_shapes_and_config():
    model = FashionMNISTClassifier().eval()
    images = torch.rand(2, 1, 28, 28)
    assert model(images).shape == (2, 10)
    assert model.features(images).shape == (2, model.config.feature_dim)
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 300_000


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = FashionMNISTClassifier(block_out_channels=(4, 8), feature_dim=16)
    model.train()
    model(torch.rand(8, 1, 28, 28))  # move the batch-norm running statistics away from their initial values
    model.eval()
    model.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / "diffusion_pytorch_model.safetensors")
    loaded = FashionMNISTClassifier.from_pretrained(tmp_path)
    assert loaded.config.block_out_channels == [4, 8] and not loaded.training
    images = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
        torch.testing.assert_close(loaded.features(images), model.features(images))


def test_train_classifier_smoke(tmp_path):
    data_dir, output_dir = str(tmp_path / "data"), str(tmp_path / "classifier")
    write_fashion_mnist(data_dir)
    args = train_classifier.parse_args(
        ["--fashion_mnist_dir", data_dir, "--output_dir", output_dir, "--max_train_steps", "3",
         "--train_batch_size", "16", "--logging_steps", "1"]
    )  # fmt: skip
    accuracy = train_classifier.main(args)
    assert 0.0 <= accuracy <= 1.0
    assert os.path.isfile(os.path.join(output_dir, "metrics.json"))
    FashionMNISTClassifier.from_pretrained(output_dir)


def test_augment_shift_moves_pixels():
    images = torch.zeros(16, 1, 6, 6)
    images[:, :, 2, 3] = 1
    shifted = train_classifier.augment(images, False, 1, torch.Generator().manual_seed(0))
    rows, cols = (shifted[:, 0] == 1).nonzero()[:, 1:].T
    assert shifted.sum() == 16 and rows.sub(2).abs().max() <= 1 and cols.sub(3).abs().max() <= 1
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 1
