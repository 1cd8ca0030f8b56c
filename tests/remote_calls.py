"""The calls test_remote_code.py makes on a pipeline, the same in the test process (this package's classes) and in the
process where this package cannot be imported (the folder's remote code): so it imports neither the package nor the
tests' conftest."""

import numpy as np
import torch


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pipeline_outputs(pipe, image: np.ndarray) -> dict[str, np.ndarray]:
    """What a user runs: `encode`, decodes with the saved defaults, at realism 1, from codes z ~ N(0, I) with one
    generator per image, `invert` and the decode of its latents; images as `output_type="np"`."""
    pipe.set_progress_bar_config(disable=True)
    image = torch.from_numpy(image)
    out = {"codes": pipe.encode(image).numpy()}
    out["saved_defaults"] = pipe(image=image, generator=seeded(), output_type="np").images
    out["realism_1"] = pipe(image=image, realism=1.0, generator=seeded(), output_type="np").images
    sampled = pipe(batch_size=2, generator=[seeded(1), seeded(2)], output_type="np")
    out["sampled"], out["sampled_codes"] = sampled.images, sampled.latent_codes.numpy()
    inversion = pipe.invert(image, num_inference_steps=4)
    out["inverted"] = inversion.latents.numpy()
    decode = pipe(latent_codes=inversion.latent_codes, latents=inversion.latents, output_type="np")
    out["inverted_decode"] = decode.images
    return out


def decode_defaults(pipe) -> dict:
    """`pipe.decode_defaults` as JSON keeps it (infinities as strings)."""
    return {key: repr(value) for key, value in pipe.decode_defaults.items()}
