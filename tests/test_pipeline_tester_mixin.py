"""diffusers' own `PipelineTesterMixin` on ScoreVAEPipeline, with tiny components (the peer suite every diffusers
pipeline passes: save / load, batching, dtypes, callbacks, variants, DDUF, ...).

The mixin lives in diffusers' repository (`tests/pipelines/test_pipelines_common.py`), not in the pip package. This
file runs it where a copy is at hand: the path in `$DIFFUSERS_PIPELINE_TESTS_COMMON`, or
`tests/diffusers_common/test_pipelines_common.py`, a copy of that file whose relative imports of diffusers' test tree
point at the installed `diffusers.utils.testing_utils` instead. Without one, the module is skipped (and says so).
"""

import importlib.util
import os
import unittest

import pytest
import torch
from conftest import LATENT_DIM, make_encoder, make_unet
from diffusers import DDPMScheduler

from diffusers_scorevae import ScoreVAEPipeline

COMMON = os.environ.get("DIFFUSERS_PIPELINE_TESTS_COMMON") or os.path.join(
    os.path.dirname(__file__), "diffusers_common", "test_pipelines_common.py"
)
if not os.path.isfile(COMMON):
    pytest.skip(
        f"diffusers' tests/pipelines/test_pipelines_common.py is not in the pip package and no copy is at {COMMON} "
        "(set DIFFUSERS_PIPELINE_TESTS_COMMON to one)",
        allow_module_level=True,
    )
_spec = importlib.util.spec_from_file_location("diffusers_test_pipelines_common", COMMON)
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)
PipelineTesterMixin = common.PipelineTesterMixin


class ScoreVAEPipelineFastTests(PipelineTesterMixin, unittest.TestCase):
    pipeline_class = ScoreVAEPipeline
    # what a ScoreVAE decode takes: a code (or an image to encode) and the encoder term's weight and range
    params = frozenset(["image", "latent_codes", "guidance_scale", "guidance_log_snr_range"])
    batch_params = frozenset(["latent_codes"])
    # no prompts: each code decodes to one image (decode a code several times by repeating it, as unconditional
    # diffusers pipelines such as DDPMPipeline are tested without `num_images_per_prompt`)
    required_optional_params = PipelineTesterMixin.required_optional_params - {"num_images_per_prompt"}
    # diffusers 0.42 no longer loads DDUF files (`from_pretrained(..., dduf_file=...)` raises for every pipeline)
    supports_dduf = False

    def get_dummy_components(self):
        return {
            "unet": make_unet(3),
            "scheduler": DDPMScheduler(num_train_timesteps=100),
            "encoder": make_encoder(3),
            "vae": None,  # a pixel-space prior: the optional autoencoder is absent
        }

    def get_dummy_inputs(self, device, seed=0):
        generator = torch.Generator(device="cpu").manual_seed(seed)
        return {
            "latent_codes": torch.randn(1, LATENT_DIM, generator=torch.Generator().manual_seed(seed + 1)),
            "num_inference_steps": 2,
            "guidance_scale": 2.0,
            "generator": generator,
            "output_type": "np",
        }
