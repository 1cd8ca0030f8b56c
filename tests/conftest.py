"""Tiny real components shared by the tests (STYLE.md: diffusers-style tests, seconds on a CPU).

Every fixture builds fresh modules under a fixed seed, so a test may mutate what it gets (replace a `forward`, run a
scheduler) without leaking state into the next test.
"""

import socket

import pytest
import torch
from diffusers import UNet2DModel

from diffusers_scorevae import ScoreVAEEncoder

# The components are tiny: thread start-up costs more than the arithmetic, and the CI machines are shared.
torch.set_num_threads(1)


def pytest_configure(config):
    # diffusers' sigma-based schedulers trip numpy 2 deprecation warnings thousands of times per run
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:diffusers.*")
    config.addinivalue_line("filterwarnings", "ignore:__array_wrap__ must accept context:DeprecationWarning")


SAMPLE_SIZE = 8
LATENT_DIM = 16


def make_unet(in_channels: int = 3, sample_size=SAMPLE_SIZE, out_channels: int | None = None) -> UNet2DModel:
    """A tiny unconditional `UNet2DModel`, built under `torch.manual_seed(0)`."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels or in_channels,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


def make_encoder(
    in_channels: int = 3, sample_size=SAMPLE_SIZE, latent_dim: int = LATENT_DIM, random_head: bool = True
) -> ScoreVAEEncoder:
    """A tiny `ScoreVAEEncoder`, built under `torch.manual_seed(0)`.

    The encoder's head `proj_out` starts at zero (an untrained encoder has zero score); with `random_head=True` it is
    re-initialised with small random weights so that its score, and hence the guidance term, is non-zero.
    """
    torch.manual_seed(0)
    encoder = ScoreVAEEncoder(
        sample_size=sample_size,
        in_channels=in_channels,
        latent_dim=latent_dim,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        norm_num_groups=4,
    )
    if random_head:
        torch.manual_seed(1)
        torch.nn.init.normal_(encoder.proj_out.weight, std=0.05)
        torch.nn.init.normal_(encoder.proj_out.bias, std=0.05)
    return encoder.eval()


@pytest.fixture
def unet() -> UNet2DModel:
    return make_unet(3)


@pytest.fixture
def encoder() -> ScoreVAEEncoder:
    return make_encoder(3)


@pytest.fixture
def unet_1ch() -> UNet2DModel:
    return make_unet(1)


@pytest.fixture
def encoder_1ch() -> ScoreVAEEncoder:
    return make_encoder(1)


@pytest.fixture
def latent_codes() -> torch.Tensor:
    return torch.randn(2, LATENT_DIM, generator=torch.Generator().manual_seed(2))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_app(launch, attempts: int = 3, **kwargs):
    """`launch(server_name="127.0.0.1", server_port=<a free port>, prevent_thread_lock=True, **kwargs)` (the app's
    `launch`), as `(demo, url)`. Gradio gives its server 5 s to start and the page a few seconds to answer, and another
    process may take a free port before the server binds it: on a machine other jobs load, each can fail once, so a
    failed start is tried again on another port (a bound on flakiness, not a timing of the app)."""
    for attempt in range(attempts):
        port = free_port()
        try:
            demo = launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, **kwargs)
        except (OSError, ValueError) as error:  # "Cannot find empty port", "When localhost is not accessible"
            if attempt == attempts - 1 or not ("port" in str(error) or "localhost" in str(error)):
                raise
            continue
        return demo, f"http://127.0.0.1:{port}/"
