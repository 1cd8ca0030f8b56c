#!/usr/bin/env python
"""Train a ScoreVAE encoder against a frozen, pretrained, unconditional diffusers prior.

Two objectives (`--objective`):
- `score` (docs/math.md §5): denoising score matching of the conditional score through the frozen UNet, plus β · KL.
- `posterior` (docs/math.md §8): fit q_φ(z | x_t, λ_t) by maximum likelihood to the codes of a frozen `--teacher` (a
  ScoreVAEEncoder at its clean level, or a BetaVAE's encoder). No UNet runs and there is no double backward, so a step
  is several times cheaper; the prior is read for its noise schedule (and written into the output pipeline).
The recipe that uses both: `--objective posterior --teacher T --output_dir A`, then
`--objective score --init_encoder A/encoder --output_dir B` (score matching continues from the fitted posterior).

Only the encoder trains; the prior's UNet is loaded once, frozen, and never wrapped by the optimizer or DDP.

A flow-matching prior (a folder whose scheduler is a `FlowMatchEulerDiscreteScheduler`, as `train_prior.py
--flow_matching` writes) trains the same canonical encoder (docs/math.md §10): σ is drawn from the scheduler's training
grid without σ = 1, the UNet is called with the float timestep σ · T, its velocity is read as a noise prediction and
the encoder sees x_σ / c at λ = 2 log((1 − σ) / σ); validation decodes with the prior's own flow scheduler.

A latent-diffusion prior (an LDMPipeline folder or repo with `vqvae/`, e.g. CompVis/ldm-celebahq-256, or a ScoreVAE
pipeline with `vae/`): the encoder trains on the autoencoder's latents. Images are read at the autoencoder's pixel
resolution and encoded through the frozen autoencoder by the pipeline's rule (`diffusers_scorevae.autoencoders`): once,
before training, into an in-memory cache when the images are deterministic (no `--random_flip`; `--center_crop` or
`--fashion_mnist_dir`) and the cache fits in `--max_latent_cache_gb`; otherwise every batch is encoded on the fly.

    python examples/train_scorevae_encoder.py \
        --pretrained_model_name_or_path google/ddpm-cifar10-32 \
        --dataset_name cifar10 --output_dir scorevae-cifar10 --latent_dim 384

    # Fashion-MNIST from Debian's dataset-fashion-mnist package (offline), two CPU processes:
    torchrun --nproc_per_node 2 --master_addr 127.0.0.1 examples/train_scorevae_encoder.py \
        --pretrained_model_name_or_path PRIOR_FOLDER --fashion_mnist_dir /usr/share/datasets/fashion-mnist \
        --output_dir scorevae-fmnist
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time

import diffusers
import numpy as np
import PIL.Image
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline
from diffusers_scorevae.autoencoders import vae_encode
from diffusers_scorevae.noise import is_flow_scheduler
from diffusers_scorevae.training import LOSS_WEIGHTINGS, posterior_loss, scorevae_loss

logger = get_logger(__name__, log_level="INFO")

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
# each checkpoint records what it was trained for (objective, teacher and the sha256 of the teacher's weights), so that
# a resume that would silently change the objective (e.g. a teacher path that now holds other weights) is refused
RUN_RECORD = "training_run.json"
# the sha256 of every file of a checkpoint, written last: a resume verifies them before loading anything, so that a
# checkpoint damaged after it was written (truncated by a full disk, a partial copy, bit rot) is an error naming it
CHECKSUMS = "checksums.json"
OBJECTIVES = ("score", "posterior")
LOG_KEYS = {
    "score": ("loss", "score_loss", "prior_loss", "kl"),
    "posterior": ("loss", "nll", "clean_nll", "teacher_entropy", "teacher_kl"),
}


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Train a ScoreVAE encoder against a frozen diffusers prior.")
    # prior
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="Hub id or folder of the prior: a saved DDPMPipeline (or any folder with `unet/` and `scheduler/`), or a "
        "latent-diffusion prior (an LDMPipeline with `vqvae/`, or `vae/`): then the encoder trains on its latents.",
    )
    parser.add_argument("--revision", type=str, default=None, help="Revision of the prior on the Hub.")
    # data
    parser.add_argument(
        "--dataset_name", type=str, default=None, help="A Hub dataset, e.g. zalando-datasets/fashion_mnist."
    )
    parser.add_argument("--dataset_config_name", type=str, default=None)
    parser.add_argument("--train_data_dir", type=str, default=None, help="A folder of images (datasets' imagefolder).")
    parser.add_argument(
        "--fashion_mnist_dir",
        type=str,
        default=None,
        help="A folder with Fashion-MNIST idx .gz files (Debian: /usr/share/datasets/fashion-mnist); works offline.",
    )
    parser.add_argument(
        "--image_column", type=str, default=None, help="Image column of a Hub dataset (auto if unset)."
    )
    parser.add_argument("--cache_dir", type=str, default=None)
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="Training resolution; defaults to (and must equal) the UNet's, or with an autoencoder its pixel "
        "resolution.",
    )
    parser.add_argument(
        "--pad_images",
        action="store_true",
        help="Pad images smaller than the resolution centrally with black instead of resizing them (Fashion-MNIST's "
        "28x28 for the 32x32 autoencoder of train_autoencoder_kl.py, as train_prior.py --vae pads them).",
    )
    parser.add_argument(
        "--max_latent_cache_gb",
        type=float,
        default=4.0,
        help="With an autoencoder: cache the dataset's latents in memory when they take at most this much (0: never; "
        "encode every batch on the fly).",
    )
    parser.add_argument("--center_crop", action="store_true", help="Center crop instead of a random crop.")
    parser.add_argument("--random_flip", action="store_true", help="Randomly flip images horizontally.")
    parser.add_argument("--max_train_samples", type=int, default=None, help="Truncate the dataset (debugging).")
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    # encoder
    parser.add_argument("--latent_dim", type=int, default=32)
    parser.add_argument("--encoder_block_out_channels", type=str, default="32,64,128,128")
    parser.add_argument("--encoder_layers_per_block", type=int, default=1)
    parser.add_argument("--encoder_norm_num_groups", type=int, default=8)
    parser.add_argument("--clean_log_snr", type=float, default=10.0, help="λ at which clean images are encoded.")
    parser.add_argument(
        "--init_encoder",
        type=str,
        default=None,
        help="Start from this saved ScoreVAEEncoder, a ScoreVAEPipeline's encoder or the encoder of a saved BetaVAE "
        "(same architecture). With --objective posterior the default is the --teacher; `scratch` starts from a new "
        "encoder built from the --encoder_* and --latent_dim options.",
    )
    # objective
    parser.add_argument(
        "--objective",
        type=str,
        default="score",
        choices=OBJECTIVES,
        help="`score`: score matching through the frozen UNet (docs/math.md §5); `posterior`: maximum likelihood of "
        "the --teacher's codes under q(z | x_t) (docs/math.md §8), no UNet.",
    )
    parser.add_argument(
        "--teacher",
        type=str,
        default=None,
        help="With --objective posterior: the frozen encoder of clean images whose codes q(z | x_t) is fitted to: a "
        "saved ScoreVAEEncoder, a ScoreVAEPipeline folder (its encoder) or a saved BetaVAE (its encoder). The trained "
        "encoder starts as a copy of it unless --init_encoder is given.",
    )
    parser.add_argument("--beta", type=float, default=0.01, help="KL weight (sums over pixels and latent dims).")
    parser.add_argument("--beta_warmup_steps", type=int, default=0, help="Ramp beta linearly from 0 over N steps.")
    parser.add_argument("--loss_weighting", type=str, default="simple", choices=LOSS_WEIGHTINGS)
    parser.add_argument(
        "--timestep_sampling",
        type=str,
        default="uniform",
        choices=("uniform", "importance"),
        help="`importance` draws t with p(t) ∝ w(t) and reweights, so each term has weight 1 (variance reduction).",
    )
    # optimisation
    parser.add_argument("--train_batch_size", type=int, default=64, help="Batch size per process.")
    parser.add_argument("--num_epochs", type=int, default=100)
    parser.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_epochs when set.")
    parser.add_argument(
        "--max_train_minutes", type=float, default=None, help="Stop after this much wall time (checkpoint + save)."
    )
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument(
        "--lr_scheduler",
        type=str,
        default="constant_with_warmup",
        help='One of "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup".',
    )
    parser.add_argument("--lr_warmup_steps", type=int, default=100)
    parser.add_argument("--adam_beta1", type=float, default=0.9)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_weight_decay", type=float, default=0.0)
    parser.add_argument("--adam_epsilon", type=float, default=1e-8)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--use_ema", action="store_true", help="Keep an EMA of the encoder (diffusers' EMAModel).")
    parser.add_argument("--ema_inv_gamma", type=float, default=1.0)
    parser.add_argument("--ema_power", type=float, default=3 / 4)
    parser.add_argument("--ema_max_decay", type=float, default=0.9999)
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"])
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--cpu", action="store_true", help="Train on the CPU even when a GPU is available.")
    # checkpoints, logging, validation
    parser.add_argument("--output_dir", type=str, default="scorevae-encoder")
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--checkpoints_total_limit", type=int, default=None)
    parser.add_argument(
        "--resume_from_checkpoint", type=str, default=None, help='A checkpoint folder, or "latest" in --output_dir.'
    )
    parser.add_argument("--logging_dir", type=str, default="logs")
    parser.add_argument("--logger", type=str, default="tensorboard", choices=["tensorboard", "wandb", "none"])
    parser.add_argument("--logging_steps", type=int, default=10)
    parser.add_argument("--validation_steps", type=int, default=None, help="Log original | reconstruction grids.")
    parser.add_argument("--num_validation_images", type=int, default=8)
    parser.add_argument("--validation_inference_steps", type=int, default=50)
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", type=str, default=None)
    parser.add_argument("--hub_token", type=str, default=None)

    args = parser.parse_args(input_args)
    if args.objective == "posterior" and args.teacher is None:
        raise ValueError("--objective posterior needs --teacher (a ScoreVAEEncoder, ScoreVAEPipeline or BetaVAE).")
    if args.objective != "posterior" and args.teacher is not None:
        raise ValueError(f"--teacher is only used with --objective posterior, not --objective {args.objective}.")
    sources = [args.dataset_name, args.train_data_dir, args.fashion_mnist_dir]
    if sum(s is not None for s in sources) != 1:
        raise ValueError("Give exactly one of --dataset_name, --train_data_dir or --fashion_mnist_dir.")
    if args.resume_from_checkpoint is not None and args.resume_from_checkpoint != "latest":
        if not CHECKPOINT_PATTERN.match(os.path.basename(os.path.normpath(args.resume_from_checkpoint))):
            raise ValueError(
                f"--resume_from_checkpoint {args.resume_from_checkpoint!r} must be 'latest' or a checkpoint-N folder."
            )
    args.encoder_block_out_channels = tuple(int(c) for c in args.encoder_block_out_channels.split(","))
    return args


# ---------------------------------------------------------------------------------------------------------------------
# data


class ImageDataset(torch.utils.data.Dataset):
    """Images (PIL or uint8 arrays) converted to the prior's channels and resolution, as tensors in [-1, 1].

    Crops are drawn from a generator seeded by (seed, epoch, index), so a resumed run sees exactly the same pixels."""

    def __init__(self, images, channels: int, resolution: int, center_crop: bool, seed: int, pad: bool = False):
        self.images, self.channels, self.resolution = images, channels, resolution
        self.center_crop, self.seed, self.epoch, self.pad = center_crop, seed, 0, pad
        self.mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
        if self.mode is None:
            raise ValueError(f"The prior has {channels} channels; image datasets can be converted to 1, 3 or 4.")

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        if not isinstance(image, PIL.Image.Image):
            image = PIL.Image.fromarray(np.asarray(image))
        image = image.convert(self.mode)
        if self.pad:  # centrally, with black, to the resolution (--pad_images); never resized
            if max(image.size) > self.resolution:
                raise ValueError(
                    f"--pad_images: image {index} is {image.size[0]}x{image.size[1]}, larger than --resolution "
                    f"{self.resolution}; images are padded, never resized."
                )
            padded = PIL.Image.new(self.mode, (self.resolution, self.resolution))  # black
            padded.paste(image, ((self.resolution - image.size[0]) // 2, (self.resolution - image.size[1]) // 2))
            image = padded
        # resize the shorter side to the resolution, then crop (as diffusers' train_unconditional does)
        scale = self.resolution / min(image.size)
        if scale != 1:
            size = (
                max(self.resolution, round(image.size[0] * scale)),
                max(self.resolution, round(image.size[1] * scale)),
            )
            image = image.resize(size, PIL.Image.BILINEAR)
        width, height = image.size
        if self.center_crop:
            left, top = (width - self.resolution) // 2, (height - self.resolution) // 2
        else:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            left, top = rng.integers(0, width - self.resolution + 1), rng.integers(0, height - self.resolution + 1)
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        array = np.asarray(image, dtype=np.float32).reshape(self.resolution, self.resolution, self.channels) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1) * 2 - 1


def load_images(args):
    """The training images: a list of PIL images, a uint8 array, or a `datasets` column."""
    if args.fashion_mnist_dir is not None:
        from diffusers_scorevae.data import load_fashion_mnist

        images, _ = load_fashion_mnist("train", data_dir=args.fashion_mnist_dir)
        return images
    from datasets import load_dataset

    if args.dataset_name is not None:
        dataset = load_dataset(
            args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir, split="train"
        )
    else:
        dataset = load_dataset("imagefolder", data_dir=args.train_data_dir, cache_dir=args.cache_dir, split="train")
    column = args.image_column
    if column is None:
        from datasets import Image as ImageFeature

        columns = [name for name, feature in dataset.features.items() if isinstance(feature, ImageFeature)]
        if not columns:
            raise ValueError(f"No image column in {list(dataset.features)}; pass --image_column.")
        column = columns[0]
    elif column not in dataset.column_names:
        raise ValueError(f"--image_column {column!r} is not one of the dataset's columns {dataset.column_names}.")
    return dataset[column] if len(dataset) <= 100_000 else _LazyColumn(dataset, column)


class _LazyColumn:
    def __init__(self, dataset, column):
        self.dataset, self.column = dataset, column

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[int(index)][self.column]


# ---------------------------------------------------------------------------------------------------------------------
# prior, checkpoints and saving


def load_prior(args):
    """The prior's UNet and its scheduler (of the class it was saved with), from a Hub repo id or a folder, with
    `unet/` + `scheduler/` folders or everything at the root (`google/ddpm-*`), safetensors or `.bin` weights."""
    from diffusers_scorevae import hub

    return hub.load_prior(args.pretrained_model_name_or_path, revision=args.revision)


def load_latent_prior(args):
    """[`load_prior`] plus the prior's autoencoder: `None` for a pixel-space prior, the `VQModel` of an LDMPipeline's
    `vqvae/` (CompVis/ldm-celebahq-256) or a pipeline's `vae/`."""
    from diffusers_scorevae import hub

    return hub.load_latent_prior(args.pretrained_model_name_or_path, revision=args.revision)


class CachedLatents(torch.utils.data.Dataset):
    """The training images' autoencoder latents, encoded once (the images are the same every epoch)."""

    def __init__(self, latents: torch.Tensor):
        self.latents, self.epoch = latents, 0

    def __len__(self):
        return len(self.latents)

    def __getitem__(self, index):
        return self.latents[index]


@torch.no_grad()
def encode_dataset(dataset, vae, batch_size: int, device) -> torch.Tensor:
    """Every image of `dataset` (model space, [-1, 1]) through the frozen autoencoder: float32 latents on the CPU."""
    latents = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="Encoding the dataset to latents"):
        batch = torch.stack([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        latents.append(vae_encode(vae, batch.to(device)).float().cpu())
    return torch.cat(latents)


def load_clean_encoder(path: str):
    """A saved ScoreVAEEncoder, the encoder of a saved ScoreVAEPipeline, or a saved BetaVAE, in float32 (bundled
    weights may be stored in float16)."""
    if os.path.isfile(os.path.join(path, "model_index.json")):
        return ScoreVAEEncoder.from_pretrained(path, subfolder="encoder", torch_dtype=torch.float32)
    config = ScoreVAEEncoder.load_config(path)
    if config.get("_class_name") == "BetaVAE":
        from diffusers_scorevae.models.beta_vae import BetaVAE

        return BetaVAE.from_pretrained(path, torch_dtype=torch.float32)
    return ScoreVAEEncoder.from_pretrained(path, torch_dtype=torch.float32)


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 of a model's state dict (names, shapes, dtypes and values): identifies a teacher's weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_resume(path: str, record: dict):
    """Raise a `ValueError` when the checkpoint at `path` was trained for another objective or against other teacher
    weights than this run's `record` (see `RUN_RECORD`); a checkpoint without a record (older runs) is not checked."""
    file = os.path.join(path, RUN_RECORD)
    if not os.path.isfile(file):
        logger.warning(f"{path} has no {RUN_RECORD} (an older run): its objective and teacher are not checked.")
        return
    with open(file) as f:
        saved = json.load(f)
    restart = f"resume with the same settings, or start a new --output_dir with --init_encoder {path}/encoder"
    if saved.get("objective") != record["objective"]:
        raise ValueError(
            f"--objective {record['objective']} differs from the objective {saved.get('objective')!r} that {path} "
            f"was trained with; {restart}."
        )
    if saved.get("teacher_sha256") != record["teacher_sha256"]:
        raise ValueError(
            f"--teacher {record['teacher']} (weights sha256 {str(record['teacher_sha256'])[:12]}) is not the teacher "
            f"{path} was trained against ({saved.get('teacher')}, weights sha256 "
            f"{str(saved.get('teacher_sha256'))[:12]}); {restart}."
        )


class DamagedCheckpointError(RuntimeError):
    """A checkpoint whose files changed after they were written, or that cannot be loaded."""


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_files(path: str) -> list[str]:
    """Every file of the checkpoint folder `path` (but the checksums), `/`-separated, sorted."""
    files = []
    for folder, _, names in os.walk(path):
        files += [os.path.relpath(os.path.join(folder, n), path).replace(os.sep, "/") for n in names]
    return sorted(f for f in files if f != CHECKSUMS)


def write_checksums(path: str):
    """Record the sha256 of every file of the checkpoint at `path` in `path/checksums.json`."""
    with open(os.path.join(path, CHECKSUMS), "w") as f:
        json.dump({name: file_sha256(os.path.join(path, name)) for name in checkpoint_files(path)}, f, indent=2)


def damaged_checkpoint(path: str, problem: str, output_dir: str | None = None) -> DamagedCheckpointError:
    """The error for checkpoint `path`: what is wrong, and what to do (the checkpoint before it, or deleting it)."""
    earlier = []
    if output_dir is not None:
        name = os.path.basename(os.path.normpath(path))
        earlier = [c for c in list_checkpoints(output_dir) if c != name]
        match = CHECKPOINT_PATTERN.match(name)
        if match:
            earlier = [c for c in earlier if int(CHECKPOINT_PATTERN.match(c).group(1)) < int(match.group(1))]
    if earlier:
        advice = (
            f"resume from the checkpoint before it with --resume_from_checkpoint "
            f"{os.path.join(output_dir, earlier[-1])}, or delete {path} and resume from 'latest' again"
        )
    else:
        advice = f"delete {path} to start the run anew (no earlier checkpoint is left)"
    return DamagedCheckpointError(f"The checkpoint {path} is damaged: {problem}. Nothing was loaded; {advice}.")


def verify_checkpoint(path: str, output_dir: str | None = None):
    """Raise a [`DamagedCheckpointError`] when a file of the checkpoint at `path` is missing or differs from the
    checksum recorded when it was written; a checkpoint without checksums (older runs) is not checked."""
    file = os.path.join(path, CHECKSUMS)
    if not os.path.isfile(file):
        logger.warning(f"{path} has no {CHECKSUMS} (an older run): its files are not verified.")
        return
    try:
        with open(file) as f:
            recorded = json.load(f)
    except (OSError, ValueError) as error:
        raise damaged_checkpoint(path, f"its {CHECKSUMS} cannot be read ({error})", output_dir) from error
    for name, expected in sorted(recorded.items()):
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            raise damaged_checkpoint(path, f"{name} is missing", output_dir)
        if file_sha256(full) != expected:
            size = os.path.getsize(full)
            raise damaged_checkpoint(path, f"{name} ({size} bytes) is not the file that was written", output_dir)


def check_teacher_matches_unet(teacher, unet, path: str):
    """Raise a `ValueError` unless the teacher reads the UNet's samples (with a latent prior: its latents, e.g. a β-VAE
    trained with `train_beta_vae.py --vae`), `(in_channels, sample_size)` equal."""
    config = (teacher if isinstance(teacher, ScoreVAEEncoder) else teacher.encoder).config
    found, expected = (config.in_channels, config.sample_size), (unet.config.in_channels, unet.config.sample_size)
    if found != expected:
        raise ValueError(
            f"--teacher {path} reads (in_channels, sample_size) = {found} but the prior's UNet models {expected}; "
            "with a latent prior the teacher must encode the autoencoder's latents "
            "(train_beta_vae.py --vae AUTOENCODER)."
        )


def load_init_encoder(path: str, record: dict) -> ScoreVAEEncoder:
    """A copy of a saved ScoreVAEEncoder, of a ScoreVAEPipeline's encoder, or of a saved BetaVAE's encoder (same
    architecture), in float32, recording `record` as its prior, to start training from."""
    model = load_clean_encoder(path)
    inner = model.encoder if not isinstance(model, ScoreVAEEncoder) else model
    encoder = ScoreVAEEncoder.from_config(inner.config, prior=record)
    encoder.load_state_dict(inner.state_dict())
    return encoder


def prior_record(args, unet, scheduler) -> dict:
    """What the encoder's config records about its prior (see ScoreVAEEncoder's `prior`)."""
    path = args.pretrained_model_name_or_path
    return {
        # a local folder is recorded as an absolute path, so that it cannot be mistaken for a Hub repo id
        "name_or_path": os.path.abspath(path) if os.path.isdir(path) else path,
        "revision": args.revision,
        "scheduler": type(scheduler).__name__,
        "beta_schedule": scheduler.config.get("beta_schedule"),
        "num_train_timesteps": scheduler.config.get("num_train_timesteps"),
        "prediction_type": scheduler.config.get("prediction_type", "epsilon"),
        "sample_size": unet.config.sample_size,
        "in_channels": unet.config.in_channels,
    }


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoint folders in `output_dir`, oldest first (a `.tmp` folder from a killed run is ignored)."""
    if not os.path.isdir(output_dir):
        return []
    names = [d for d in os.listdir(output_dir) if CHECKPOINT_PATTERN.match(d)]
    return sorted(names, key=lambda d: int(CHECKPOINT_PATTERN.match(d).group(1)))


def replace_dir(src: str, dst: str):
    """Move folder `src` to `dst`, replacing `dst`; the old folder is kept until the new one is in place."""
    trash = dst + ".old"
    if os.path.exists(trash):
        shutil.rmtree(trash)
    if os.path.exists(dst):
        os.rename(dst, trash)
    os.rename(src, dst)
    if os.path.exists(trash):
        shutil.rmtree(trash)


def save_pipeline(output_dir: str, encoder: ScoreVAEEncoder, unet, scheduler, vae=None):
    """Write a complete ScoreVAEPipeline to `output_dir`: the prior (and its autoencoder) once, then the encoder
    folder, swapped in whole."""
    if not os.path.exists(os.path.join(output_dir, "model_index.json")):
        tmp = os.path.join(output_dir, ".pipeline.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ScoreVAEPipeline(unet=unet, scheduler=scheduler, encoder=encoder, vae=vae).save_pretrained(tmp)
        for name in ("unet", "scheduler", "encoder") + (("vae",) if vae is not None else ()):
            replace_dir(os.path.join(tmp, name), os.path.join(output_dir, name))
        os.replace(os.path.join(tmp, "model_index.json"), os.path.join(output_dir, "model_index.json"))
        shutil.rmtree(tmp)
    else:
        tmp = os.path.join(output_dir, ".encoder.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        encoder.save_pretrained(tmp)
        replace_dir(tmp, os.path.join(output_dir, "encoder"))


class GeneratorState:
    """Makes the loss's `torch.Generator` part of accelerate's checkpoints, so a resumed run draws the same noise."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self):
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state_dict):
        self.generator.set_state(state_dict["state"])


@torch.no_grad()
def log_validation(args, accelerator, encoder, unet, scheduler, images, global_step, vae=None):
    """Reconstruct a fixed set of training images; log an (original | reconstruction) grid and the mean L2. A VP prior
    decodes with DDIM, a flow-matching prior with a fresh copy of its own (deterministic) flow scheduler."""
    if is_flow_scheduler(scheduler):
        scheduler = type(scheduler).from_config(scheduler.config)
    else:
        scheduler = diffusers.DDIMScheduler.from_config(scheduler.config)
    pipe = ScoreVAEPipeline(unet=unet, scheduler=scheduler, encoder=encoder, vae=vae)
    pipe.set_progress_bar_config(disable=True)
    originals = (images.to(accelerator.device) + 1) / 2
    reconstructions = pipe(
        image=originals.float(),
        num_inference_steps=args.validation_inference_steps,
        generator=torch.Generator(device="cpu").manual_seed(args.seed or 0),
        output_type="pt",
    ).images
    l2 = (reconstructions - originals).flatten(1).norm(dim=1).mean().item()
    grid = torch.cat([torch.cat(list(originals), dim=-1), torch.cat(list(reconstructions), dim=-1)], dim=-2)
    array = (grid.permute(1, 2, 0).cpu().float().numpy() * 255).round().astype(np.uint8)
    os.makedirs(os.path.join(args.output_dir, "validation"), exist_ok=True)
    PIL.Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(
        os.path.join(args.output_dir, "validation", f"step-{global_step:07d}.png")
    )
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("original | reconstruction", grid.cpu(), global_step)
    accelerator.log({"validation_l2": l2}, step=global_step)
    logger.info(f"step {global_step}: validation L2 {l2:.4f} on {len(originals)} images")
    return l2


# ---------------------------------------------------------------------------------------------------------------------


def main(args):
    start_time = time.time()
    # 1. accelerator
    # several CPU processes (torchrun without GPUs) need cpu=True for accelerate to pick the gloo backend
    cpu = args.cpu or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
    accelerator = Accelerator(
        cpu=cpu,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.logger == "none" else args.logger,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if args.seed is not None:
        set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    # 2. the frozen prior, loaded once
    unet, noise_scheduler, vae = load_latent_prior(args)
    if not isinstance(unet.config.sample_size, int):
        raise ValueError(f"The prior's UNet has sample_size {unet.config.sample_size}; square images are supported.")
    image_resolution, image_channels = unet.config.sample_size, unet.config.in_channels
    if vae is not None:  # a latent prior: images at the autoencoder's resolution, encoded to the UNet's latents
        from diffusers_scorevae.autoencoders import vae_scale_factor

        vae.requires_grad_(False).eval()
        image_resolution *= vae_scale_factor(vae)
        image_channels = vae.config.in_channels
    resolution = args.resolution if args.resolution is not None else image_resolution
    if resolution != image_resolution:
        raise ValueError(
            f"--resolution {resolution} does not match the resolution the prior models, {image_resolution} (the "
            f"UNet's sample_size {unet.config.sample_size}"
            + (f" times the {type(vae).__name__}'s downsampling)" if vae is not None else ")")
            + "; the encoder must see images at the resolution the prior models."
        )
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    unet.requires_grad_(False)
    unet.eval()

    # 3. the encoder (the only trained model)
    # (the prior record is passed at construction: diffusers' configs drop values registered after __init__ when the
    # argument had taken its default)
    record = prior_record(args, unet, noise_scheduler)
    teacher = None
    if args.objective == "posterior":
        teacher = load_clean_encoder(args.teacher).requires_grad_(False).eval()
        check_teacher_matches_unet(teacher, unet, args.teacher)
    run_record = {
        "objective": args.objective,
        "teacher": args.teacher,
        "teacher_sha256": None if teacher is None else weights_sha256(teacher),
    }
    init_encoder = args.init_encoder if args.init_encoder is not None or teacher is None else args.teacher
    if init_encoder is not None and init_encoder != "scratch":
        encoder = load_init_encoder(init_encoder, record)
    else:
        encoder = ScoreVAEEncoder(
            sample_size=unet.config.sample_size,
            in_channels=unet.config.in_channels,
            latent_dim=args.latent_dim,
            block_out_channels=args.encoder_block_out_channels,
            down_block_types=("DownBlock2D",) * len(args.encoder_block_out_channels),
            layers_per_block=args.encoder_layers_per_block,
            norm_num_groups=args.encoder_norm_num_groups,
            clean_log_snr=args.clean_log_snr,
            prior=record,
        )
    # checks channels / sample size (with an autoencoder: the encoder's are the UNet's latents')
    ScoreVAEPipeline(unet=unet, scheduler=noise_scheduler, encoder=encoder, vae=vae)
    if encoder.dtype != torch.float32:
        raise ValueError(
            f"The encoder's weights are {encoder.dtype}; train from float32 weights (mixed precision is fine)."
        )
    logger.info(f"encoder: {sum(p.numel() for p in encoder.parameters()) / 1e6:.3f}M parameters")
    if accelerator.is_main_process and not os.path.exists(os.path.join(args.output_dir, "model_index.json")):
        save_pipeline(args.output_dir, encoder, unet, noise_scheduler, vae)  # the prior in float32, before any cast
    if args.objective == "posterior" and not args.validation_steps:
        # the posterior objective reads only the schedule: once the prior is written, the UNet is not needed again
        accelerator.wait_for_everyone()
        unet = None

    ema_encoder = None
    if args.use_ema:
        ema_encoder = EMAModel(
            encoder.parameters(),
            decay=args.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
            model_cls=ScoreVAEEncoder,
            model_config=encoder.config,
        )

    # save/load hooks: checkpoints hold diffusers-format `encoder/` (and `encoder_ema/`) folders
    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            if ema_encoder is not None:
                ema_encoder.save_pretrained(os.path.join(output_dir, "encoder_ema"))
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(os.path.join(output_dir, "encoder"))
                weights.pop()

    def load_model_hook(models, input_dir):
        if ema_encoder is not None:
            loaded = EMAModel.from_pretrained(os.path.join(input_dir, "encoder_ema"), ScoreVAEEncoder)
            ema_encoder.load_state_dict(loaded.state_dict())
            ema_encoder.to(accelerator.device)
            del loaded
        for _ in range(len(models)):
            model = models.pop()
            loaded = ScoreVAEEncoder.from_pretrained(input_dir, subfolder="encoder")
            accelerator.unwrap_model(model).load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    # 4. optimizer
    optimizer = torch.optim.AdamW(
        encoder.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )

    # 5. data
    images = load_images(args)
    if args.max_train_samples is not None:
        images = images[: args.max_train_samples]
    dataset = ImageDataset(images, image_channels, resolution, args.center_crop, args.seed or 0, args.pad_images)
    validation_images = torch.stack([dataset[i] for i in range(min(args.num_validation_images, len(dataset)))])
    cached_latents = False
    if vae is not None:
        vae.to(accelerator.device)
        deterministic = not args.random_flip and (args.center_crop or args.fashion_mnist_dir is not None)
        cache_gb = len(dataset) * encoder.config.in_channels * encoder.config.sample_size**2 * 4 / 2**30
        if deterministic and 0 < cache_gb <= args.max_latent_cache_gb:
            dataset = CachedLatents(encode_dataset(dataset, vae, args.train_batch_size, accelerator.device))
            cached_latents = True
        how = f"{len(dataset)} images encoded once ({cache_gb:.3f} GB cached)"
        if not cached_latents:
            how = "images encoded batch by batch (random flips or crops, or a cache over --max_latent_cache_gb)"
        logger.info(f"latent prior ({type(vae).__name__}): {how}")
    train_dataloader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        num_workers=args.dataloader_num_workers,
        drop_last=True,
    )
    if len(train_dataloader) == 0:
        raise ValueError(
            f"The dataset has {len(dataset)} images, fewer than --train_batch_size {args.train_batch_size}."
        )

    num_update_steps_per_epoch = math.ceil(
        len(train_dataloader) / accelerator.num_processes / args.gradient_accumulation_steps
    )
    max_train_steps = args.max_train_steps or args.num_epochs * num_update_steps_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )

    # 6. prepare: only the encoder, its optimizer, the data and the lr schedule; the UNet just moves to the device
    encoder, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        encoder, optimizer, train_dataloader, lr_scheduler
    )
    if unet is not None:
        unet.to(accelerator.device, dtype=weight_dtype)
    if teacher is not None:
        teacher.to(accelerator.device)
    if ema_encoder is not None:
        ema_encoder.to(accelerator.device)
    generator = torch.Generator(device=accelerator.device).manual_seed((args.seed or 0) + accelerator.process_index)
    accelerator.register_for_checkpointing(GeneratorState(generator))
    timestep_distribution = None
    if args.timestep_sampling == "importance":
        from diffusers_scorevae.training import loss_weight, training_timesteps

        # one weight per training level: VP timesteps 0 … T − 1, or a flow prior's σ grid without σ = 1
        all_timesteps = training_timesteps(noise_scheduler).to(accelerator.device)
        timestep_distribution = loss_weight(noise_scheduler, all_timesteps, args.loss_weighting)

    # 7. trackers
    if accelerator.is_main_process and args.logger != "none":
        run = os.path.split(__file__)[-1].split(".")[0]
        accelerator.init_trackers(run, config={k: str(v) for k, v in vars(args).items()})

    # 8. resume
    global_step, first_epoch, resume_batches = 0, 0, 0
    if args.resume_from_checkpoint:
        if args.resume_from_checkpoint == "latest":
            checkpoints = list_checkpoints(args.output_dir)
            path = os.path.join(args.output_dir, checkpoints[-1]) if checkpoints else None
        else:
            path = args.resume_from_checkpoint
        if path is None:
            logger.info("No checkpoint found in --output_dir; starting a new training run.")
        else:
            logger.info(f"Resuming from {path}")
            verify_checkpoint(path, args.output_dir)
            check_resume(path, run_record)
            try:
                accelerator.load_state(path)
            except Exception as error:  # a file that passed no checksum (older runs) and does not load
                raise damaged_checkpoint(path, f"loading it failed ({type(error).__name__}: {error})",
                                         args.output_dir) from error  # fmt: skip
            global_step = int(CHECKPOINT_PATTERN.match(os.path.basename(os.path.normpath(path))).group(1))
            first_epoch = global_step // num_update_steps_per_epoch
            resume_batches = (global_step % num_update_steps_per_epoch) * args.gradient_accumulation_steps

    def checkpoint(step):
        """Atomic checkpoint: write `checkpoint-N.tmp`, then rename; also refresh the pipeline in output_dir."""
        accelerator.wait_for_everyone()
        final = os.path.join(args.output_dir, f"checkpoint-{step}")
        tmp = final + ".tmp"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            if args.checkpoints_total_limit is not None:
                existing = list_checkpoints(args.output_dir)
                for name in existing[: max(0, len(existing) - args.checkpoints_total_limit + 1)]:
                    shutil.rmtree(os.path.join(args.output_dir, name))
        accelerator.wait_for_everyone()
        accelerator.save_state(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with open(os.path.join(tmp, RUN_RECORD), "w") as f:
                json.dump(run_record, f, indent=2)
            write_checksums(tmp)  # last: every file of the checkpoint as written
            if os.path.exists(final):
                shutil.rmtree(final)
            os.rename(tmp, final)
            save_pipeline(args.output_dir, final_encoder(), unet, noise_scheduler, vae)
        accelerator.wait_for_everyone()

    def final_encoder():
        """The encoder to publish: the EMA weights when --use_ema, else the trained ones (float32, unwrapped)."""
        model = accelerator.unwrap_model(encoder)
        if ema_encoder is None:
            return model
        published = ScoreVAEEncoder.from_config(model.config)
        ema_encoder.copy_to(published.parameters())
        return published

    # 9. training loop
    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"***** Training: {len(dataset)} images, batch {total_batch_size}, {max_train_steps} steps, "
        f"from step {global_step} *****"
    )
    progress_bar = tqdm(
        range(max_train_steps), initial=global_step, disable=not accelerator.is_local_main_process, desc="Steps"
    )
    log_path = os.path.join(args.output_dir, "train_log.jsonl")
    log_keys = LOG_KEYS[args.objective]
    running = {key: 0.0 for key in log_keys} | {"n": 0}
    out_of_time = False
    for epoch in range(first_epoch, args.num_epochs if args.max_train_steps is None else 10**9):
        if global_step >= max_train_steps or out_of_time:
            break
        encoder.train()
        dataset.epoch = epoch
        train_dataloader.set_epoch(epoch)
        dataloader = train_dataloader
        if epoch == first_epoch and resume_batches > 0:
            dataloader = accelerator.skip_first_batches(train_dataloader, resume_batches)
        for clean_images in dataloader:
            if args.random_flip:
                flip = torch.rand(clean_images.shape[0], generator=generator, device=generator.device) < 0.5
                clean_images = torch.where(
                    flip.to(clean_images.device)[:, None, None, None], clean_images.flip(-1), clean_images
                )
            if vae is not None and not cached_latents:  # pixels -> the UNet's latents, through the frozen autoencoder
                with torch.no_grad():
                    clean_images = vae_encode(vae, clean_images).float()
            beta = args.beta * min(1.0, global_step / args.beta_warmup_steps) if args.beta_warmup_steps else args.beta
            with accelerator.accumulate(encoder):
                if args.objective == "score":
                    out = scorevae_loss(
                        encoder,
                        unet,
                        noise_scheduler,
                        clean_images,
                        beta=beta,
                        loss_weighting=args.loss_weighting,
                        generator=generator,
                        timestep_distribution=timestep_distribution,
                    )
                else:
                    out = posterior_loss(
                        encoder,
                        noise_scheduler,
                        clean_images,
                        teacher,
                        loss_weighting=args.loss_weighting,
                        generator=generator,
                        timestep_distribution=timestep_distribution,
                    )
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(encoder.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            for key in log_keys:  # summed on the device: no sync per step
                running[key] = running[key] + getattr(out, key).detach().float()
            running["n"] += 1

            if accelerator.sync_gradients:
                if ema_encoder is not None:
                    ema_encoder.step(encoder.parameters())
                global_step += 1
                progress_bar.update(1)
                if global_step % args.logging_steps == 0:
                    logs = {k: float(running[k]) / running["n"] for k in log_keys}
                    # seconds since this process started: wall clock, and CPU time of this process (all its threads)
                    logs.update(
                        lr=lr_scheduler.get_last_lr()[0], time=time.time() - start_time, cpu_time=time.process_time()
                    )
                    if args.objective == "score":
                        logs["beta"] = beta
                    if ema_encoder is not None:
                        logs["ema_decay"] = ema_encoder.cur_decay_value
                    progress_bar.set_postfix(loss=f"{logs['loss']:.4g}")
                    accelerator.log(logs, step=global_step)
                    if accelerator.is_main_process:
                        with open(log_path, "a") as f:
                            f.write(json.dumps({"step": global_step, **logs}) + "\n")
                    running = {k: 0.0 for k in running} | {"n": 0}

                if args.max_train_minutes is not None:
                    late = time.time() - start_time > 60 * args.max_train_minutes
                    if accelerator.num_processes > 1:  # every process must agree before a collective checkpoint
                        late = torch.tensor(float(late), device=accelerator.device)
                        late = accelerator.reduce(late, reduction="sum").item() > 0
                    out_of_time = late
                if global_step % args.checkpointing_steps == 0 or global_step >= max_train_steps or out_of_time:
                    checkpoint(global_step)
                if args.validation_steps and global_step % args.validation_steps == 0 and accelerator.is_main_process:
                    log_validation(
                        args,
                        accelerator,
                        final_encoder().to(accelerator.device),
                        unet,
                        noise_scheduler,
                        validation_images,
                        global_step,
                        vae,
                    )
                if global_step >= max_train_steps or out_of_time:
                    break

    # 10. final pipeline (the EMA encoder when --use_ema)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_pipeline(args.output_dir, final_encoder(), unet and unet.to(torch.float32), noise_scheduler, vae)
        if args.push_to_hub:
            from diffusers_scorevae.hub import push_pipeline_to_hub, training_datasets
            from diffusers_scorevae.hub.model_card import TRAINING_SUMMARY_KEYS

            push_pipeline_to_hub(
                args.output_dir,
                args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir)),
                training={key: getattr(args, key, None) for key in TRAINING_SUMMARY_KEYS},
                datasets=training_datasets(args.dataset_name, args.fashion_mnist_dir),
                token=args.hub_token,
            )
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
