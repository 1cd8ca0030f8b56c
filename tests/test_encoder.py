"""ScoreVAEEncoder: shapes, noise-level conditioning, errors, zero-initialised head, save/load."""

import os

import pytest
import torch
from conftest import LATENT_DIM, make_encoder

from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEEncoderOutput


@pytest.mark.parametrize(
    "log_snr", [1.5, torch.tensor(1.5), torch.tensor([-2.0, 0.0, 3.0])], ids=["float", "0-d", "[B]"]
)
def test_output_shapes(encoder, log_snr):
    out = encoder(torch.randn(3, 3, 8, 8), log_snr)
    assert isinstance(out, ScoreVAEEncoderOutput)
    assert out.mean.shape == (3, LATENT_DIM) and out.logvar.shape == (3, LATENT_DIM)
    mean, logvar = encoder(torch.randn(3, 3, 8, 8), log_snr, return_dict=False)
    assert mean.shape == logvar.shape == (3, LATENT_DIM)


def test_float_and_tensor_log_snr_agree(encoder):
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        a = encoder(x, 0.7)
        b = encoder(x, torch.tensor(0.7))
        c = encoder(x, torch.tensor([0.7, 0.7]))
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(a.mean, c.mean)
    torch.testing.assert_close(a.logvar, c.logvar)


def test_output_depends_on_noise_level(encoder):
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(encoder(x, -3.0).mean, encoder(x, 3.0).mean)


@pytest.mark.parametrize("log_snr", [torch.zeros(2), torch.zeros(3, 1), torch.zeros(1, 3)])
def test_wrong_log_snr_shape_raises(encoder, log_snr):
    with pytest.raises(ValueError, match="log_snr"):
        encoder(torch.randn(3, 3, 8, 8), log_snr)


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 3, 8, 6), (2, 3, 16, 16), (3, 8, 8), (2, 3, 8, 8, 1)], ids=str)
def test_wrong_sample_shape_raises(encoder, shape):
    with pytest.raises(ValueError, match="sample"):
        encoder(torch.randn(shape), 0.0)


def test_untrained_encoder_outputs_zeros():
    encoder = make_encoder(3, random_head=False)
    out = encoder(torch.randn(4, 3, 8, 8), torch.tensor([-5.0, 0.0, 2.0, 10.0]))
    assert torch.all(out.mean == 0) and torch.all(out.logvar == 0)  # q = N(0, I) for every input
    # the default construction too
    out = ScoreVAEEncoder(32, 3, 8)(torch.randn(1, 3, 32, 32), 0.0)
    assert torch.all(out.mean == 0) and torch.all(out.logvar == 0)


def test_save_pretrained_round_trip(tmp_path, encoder):
    encoder.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / "diffusion_pytorch_model.safetensors")
    assert os.path.isfile(tmp_path / "config.json")
    loaded = ScoreVAEEncoder.from_pretrained(tmp_path)
    assert _plain(loaded.config) == _plain(encoder.config)
    for (name, p), (name2, q) in zip(encoder.state_dict().items(), loaded.state_dict().items()):
        assert name == name2 and torch.equal(p, q)
    x, log_snr = torch.randn(2, 3, 8, 8), torch.tensor([0.5, -1.0])
    with torch.no_grad():
        a, b = encoder(x, log_snr), loaded(x, log_snr)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.logvar, b.logvar)


def _plain(config) -> dict:
    # JSON turns tuples into lists; diffusers adds private bookkeeping keys (`_name_or_path`, ...) on load
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}


def test_non_square_sample_size(tmp_path):
    encoder = ScoreVAEEncoder(
        sample_size=(8, 12),
        in_channels=2,
        latent_dim=5,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D",) * 2,
        norm_num_groups=4,
    )
    out = encoder(torch.randn(2, 2, 8, 12), 0.0)
    assert out.mean.shape == (2, 5)
    with pytest.raises(ValueError, match="sample"):
        encoder(torch.randn(2, 2, 12, 8), 0.0)
    # a tuple sample_size survives the JSON config
    encoder.save_pretrained(tmp_path)
    loaded = ScoreVAEEncoder.from_pretrained(tmp_path)
    assert loaded(torch.randn(1, 2, 8, 12), 0.0).mean.shape == (1, 5)


def test_three_named_arguments_are_enough():
    encoder = ScoreVAEEncoder(28, 1, 32)
    assert (encoder.config.sample_size, encoder.config.in_channels, encoder.config.latent_dim) == (28, 1, 32)
    out = encoder(torch.randn(2, 1, 28, 28), 1.0)
    assert out.mean.shape == out.logvar.shape == (2, 32)


def test_mismatched_block_config_raises():
    with pytest.raises(ValueError, match="block_out_channels"):
        ScoreVAEEncoder(8, 3, 4, down_block_types=("DownBlock2D",) * 2, block_out_channels=(8, 16, 32))
    with pytest.raises(ValueError, match="latent_dim"):
        ScoreVAEEncoder(8, 3, 0)
