#!/usr/bin/env python
"""Sample a Fashion-MNIST prior and score it: Fréchet distance between classifier features of samples and test set.

    python examples/evaluate_prior.py --pipeline runs/prior --classifier runs/classifier --output_dir runs/prior_eval

`--pipeline` is a `DDPMPipeline` folder (or any folder with `unet/` and `scheduler/`, a DDPM-family or a flow-matching
prior, sampled with its saved scheduler unless `--scheduler` names another of its family); `--classifier` a
`FashionMNISTClassifier` folder (`examples/train_classifier.py`). Writes `metrics.json` and an 8x8 `samples.png`.
The Fréchet distance uses the classifier's penultimate features (FID's formula, not Inception features): compare it
with `fd_train_vs_test`, the same distance between 10,000 training images and the test set.
"""

import argparse
import json
import os
import time

import diffusers
import numpy as np
import torch
from diffusers import DDIMPipeline, DDPMPipeline, UNet2DModel
from PIL import Image

from diffusers_scorevae.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    load_fashion_mnist,
    load_fashion_mnist_from_hub,
)
from diffusers_scorevae.loading import SCHEDULER_CLASS_NAMES, SCHEDULERS, switch_scheduler
from diffusers_scorevae.metrics import classifier_features, frechet_distance, sharpness
from diffusers_scorevae.models.classifier import FashionMNISTClassifier
from diffusers_scorevae.noise import is_flow_scheduler

# scheduler settings that change what a sampler produces; recorded in metrics.json as they are, never overridden
RECORDED_SCHEDULER_KEYS = (
    "num_train_timesteps",
    "beta_schedule",
    "prediction_type",
    "clip_sample",
    "clip_sample_range",
    "thresholding",
    "timestep_spacing",
    "variance_type",
    "set_alpha_to_one",
    "steps_offset",
    "shift",
)


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Fréchet distance of a Fashion-MNIST prior's samples.")
    parser.add_argument("--pipeline", type=str, required=True, help="Folder with `unet/` and `scheduler/`.")
    parser.add_argument("--classifier", type=str, required=True, help="A `FashionMNISTClassifier` folder.")
    parser.add_argument("--num_samples", type=int, default=10000)
    parser.add_argument(
        "--num_inference_steps",
        type=int,
        default=None,
        help="Sampling steps; defaults to the training timesteps for ddpm, 100 for ddim and 50 for the flow ones.",
    )
    parser.add_argument(
        "--scheduler",
        type=str,
        default=None,
        choices=SCHEDULERS,
        help="Sampler, built from the prior's scheduler config (default: the scheduler the prior was saved with).",
    )
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM's η (0: deterministic).")
    parser.add_argument(
        "--clip_sample",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Clip x̂_0 to [-1, 1] at every step (default: as the prior's scheduler config says).",
    )
    parser.add_argument("--batch_size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output_dir", type=str, default=None, help="Defaults to `<pipeline>/eval-<scheduler>-<steps>`."
    )
    parser.add_argument("--fashion_mnist_dir", type=str, default=FASHION_MNIST_DIR)
    parser.add_argument("--dataset_name", type=str, default=None, help="e.g. `zalando-datasets/fashion_mnist`.")
    parser.add_argument("--cache_dir", type=str, default=None)
    args = parser.parse_args(input_args)
    if args.num_samples < 2:
        raise ValueError(f"`--num_samples` must be at least 2 for a covariance, got {args.num_samples}.")
    return args


def load_split(args, split):
    """Images in [0, 1] of shape (N, 1, 28, 28)."""
    if args.dataset_name is not None:
        images, _ = load_fashion_mnist_from_hub(split, args.dataset_name, cache_dir=args.cache_dir)
    else:
        images, _ = load_fashion_mnist(split, args.fashion_mnist_dir)
    return torch.from_numpy(images).unsqueeze(1).float().div(255)


def save_grid(images, path, rows=8):
    """Save up to rows x rows images of shape (N, 1, H, W) in [0, 1] as one grayscale PNG."""
    images = images[: rows * rows, 0].mul(255).round().byte().numpy()
    count, height, width = images.shape
    grid = np.zeros((rows * height, rows * width), dtype=np.uint8)
    for index in range(count):
        row, col = divmod(index, rows)
        grid[row * height : (row + 1) * height, col * width : (col + 1) * width] = images[index]
    Image.fromarray(grid).save(path)


def main(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # 1. models: the prior as saved, with the requested sampler built from its scheduler config
    unet = UNet2DModel.from_pretrained(args.pipeline, subfolder="unet").to(device)
    with open(os.path.join(args.pipeline, "scheduler", "scheduler_config.json")) as f:
        scheduler_config = json.load(f)
    saved_scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    if args.scheduler is None:  # the saved scheduler, named as `--scheduler` would name it
        saved_names = {cls: name for name, cls in SCHEDULER_CLASS_NAMES.items()}
        args.scheduler = saved_names.get(type(saved_scheduler).__name__, type(saved_scheduler).__name__)
        train_scheduler = saved_scheduler
    else:
        train_scheduler = switch_scheduler(saved_scheduler, args.scheduler)
    if args.clip_sample is not None:
        if "clip_sample" not in train_scheduler.config:
            raise ValueError(f"--clip_sample: {type(train_scheduler).__name__} has no x̂_0 clipping.")
        train_scheduler = type(train_scheduler).from_config(train_scheduler.config, clip_sample=args.clip_sample)
    if args.scheduler == "ddim":
        pipeline = DDIMPipeline(unet=unet, scheduler=train_scheduler)
        num_inference_steps = args.num_inference_steps or 100
        sample_kwargs = {"eta": args.eta}
    else:
        # DDPMPipeline's loop (UNet at scheduler.timesteps, then scheduler.step) samples flow schedulers too
        pipeline = DDPMPipeline(unet=unet, scheduler=train_scheduler)
        default_steps = 50 if is_flow_scheduler(train_scheduler) else train_scheduler.config.num_train_timesteps
        num_inference_steps = args.num_inference_steps or default_steps
        sample_kwargs = {}
    pipeline.set_progress_bar_config(disable=True)
    classifier = FashionMNISTClassifier.from_pretrained(args.classifier).to(device).eval()
    output_dir = args.output_dir or os.path.join(args.pipeline, f"eval-{args.scheduler}-{num_inference_steps}")
    os.makedirs(output_dir, exist_ok=True)

    # 2. sample, one seeded generator per batch
    start_time = time.time()
    samples = []
    for batch_index, start in enumerate(range(0, args.num_samples, args.batch_size)):
        generator = torch.Generator(device=device).manual_seed(args.seed + batch_index)
        batch_size = min(args.batch_size, args.num_samples - start)
        images = pipeline(
            batch_size=batch_size,
            generator=generator,
            num_inference_steps=num_inference_steps,
            output_type="pt",
            **sample_kwargs,
        ).images
        samples.append(images.float().cpu())
        print(f"sampled {start + batch_size}/{args.num_samples} ({time.time() - start_time:.0f} s)")
    samples = torch.cat(samples)
    sampling_seconds = time.time() - start_time

    # 3. Fréchet distances in classifier feature space
    sample_features = classifier_features(classifier, samples, args.batch_size)
    with torch.no_grad():
        sample_classes = classifier.head(sample_features.to(device)).argmax(dim=1).cpu()
    test_features = classifier_features(classifier, test_images := load_split(args, "test"), args.batch_size)
    train_features = classifier_features(classifier, load_split(args, "train")[:10000], args.batch_size)
    fd = frechet_distance(sample_features, test_features)
    fd_train_vs_test = frechet_distance(train_features, test_features)
    class_counts = torch.bincount(sample_classes, minlength=len(FASHION_MNIST_CLASSES)).tolist()

    # 4. write metrics and the sample grid
    scheduler_config = pipeline.scheduler.config
    metrics = {
        "fd": fd,
        "fd_train_vs_test": fd_train_vs_test,
        "sharpness": sharpness(samples).mean().item(),
        "sharpness_test_images": sharpness(test_images).mean().item(),
        "num_samples": args.num_samples,
        "steps": num_inference_steps,
        "scheduler": args.scheduler,
        "clip_sample": bool(pipeline.scheduler.config.get("clip_sample", False)),
        "eta": args.eta if args.scheduler == "ddim" else None,
        "scheduler_config": {key: scheduler_config[key] for key in RECORDED_SCHEDULER_KEYS if key in scheduler_config},
        "seed": args.seed,
        "sampling_seconds": round(sampling_seconds, 1),
        "predicted_class_fractions": {
            name: count / args.num_samples for name, count in zip(FASHION_MNIST_CLASSES, class_counts)
        },
        "pipeline": os.path.abspath(args.pipeline),
        "classifier": os.path.abspath(args.classifier),
        "device": str(device),
    }
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    save_grid(samples, os.path.join(output_dir, "samples.png"))
    print(
        f"FD {fd:.3f} (train vs test {fd_train_vs_test:.3f}), sharpness {metrics['sharpness']:.4f} (test images "
        f"{metrics['sharpness_test_images']:.4f}), {args.num_samples} samples -> {output_dir}"
    )
    return metrics


if __name__ == "__main__":
    main(parse_args())
