"""The trained Fashion-MNIST models that ship inside the package (no network needed)."""

from __future__ import annotations

import os

import numpy as np

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")

BUNDLED = {
    "fashion-mnist": "ScoreVAEPipeline: the Fashion-MNIST prior (UNet2DModel, 28x28, 1 channel) + its ScoreVAE "
    "encoder",
    "fashion-mnist-latent": "ScoreVAEPipeline on latents: AutoencoderKL (32x32 padded images -> 8x8x4 latents), a "
    "latent UNet2DModel prior and a ScoreVAE encoder on its latents",
    "fashion-mnist-prior-large": "a larger Fashion-MNIST prior (cosine schedule, v-prediction), DDPMPipeline layout",
    "fashion-mnist-prior-flow": "a Fashion-MNIST flow-matching prior (rectified flow, the DDPM prior's UNet "
    "architecture), sampled by Euler-ancestral steps at shift 3, DDPMPipeline layout",
    "fashion-mnist-beta-vae": "the beta-VAE baseline (same latent size and encoder architecture)",
    "fashion-mnist-classifier": "FashionMNISTClassifier used for class_kept and Frechet distances",
}


# Bundles that a script in the repository builds into pretrained/: when an installation lacks one's folder,
# `pretrained_path` says how to build it.
BUILDABLE = {
    "fashion-mnist-latent": "scripts/train_latent_bundle.sh (AutoencoderKL 32x32 -> 8x8x4 latents, a latent UNet "
    "prior, a ScoreVAE encoder posterior-matched to a latent beta-VAE)",
}


def pretrained_path(name: str = "fashion-mnist") -> str:
    """The local folder of a bundled model, loadable with the matching `from_pretrained`:

        >>> from diffusers_scorevae import ScoreVAEPipeline, pretrained_path
        >>> pipe = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist"))

    Names: "fashion-mnist", "fashion-mnist-latent", "fashion-mnist-prior-large", "fashion-mnist-prior-flow",
    "fashion-mnist-beta-vae", "fashion-mnist-classifier".
    """
    if name not in BUNDLED and name not in BUILDABLE:
        raise ValueError(f"pretrained name {name!r} is not bundled; choose one of {sorted(BUNDLED)}.")
    path = os.path.join(PRETRAINED_DIR, name)
    if name in BUILDABLE and not os.path.isfile(os.path.join(path, "model_index.json")):
        raise FileNotFoundError(
            f"The bundle {name!r} is not in this installation ({path} holds no pipeline). Build it with "
            f"{BUILDABLE[name]}, or choose another of {sorted(BUNDLED)}."
        )
    if not os.path.isdir(path):
        raise FileNotFoundError(f"The bundled model {name!r} is missing from {PRETRAINED_DIR}; reinstall the package.")
    return path


def bundled_test_images() -> tuple[np.ndarray, np.ndarray]:
    """A few dozen Fashion-MNIST test images shipped with the package: (uint8 `[N, 28, 28]`, int64 labels `[N]`)."""
    with np.load(os.path.join(PRETRAINED_DIR, "fashion-mnist-test-images.npz"), allow_pickle=False) as data:
        return data["images"], data["labels"]
