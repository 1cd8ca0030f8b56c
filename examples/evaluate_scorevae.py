#!/usr/bin/env python
"""Evaluate ScoreVAE reconstructions on the Fashion-MNIST test set, for several samplers and guidance scales, next to
the β-VAE baseline: the rate `kl` (KL(q(z | x_0) ‖ N(0, I)), nats per image) next to L2 (the paper's table), PSNR,
SSIM, sharpness (variance of the Laplacian), and with `--classifier` class_kept and `fd` (Fréchet distance between the
classifier's features of the reconstructions and of the originals).

    python examples/evaluate_scorevae.py --pipelines runs/scorevae --beta_vae runs/beta-vae \
        --classifier runs/classifier --num_images 1000 --settings ddim:50:1 ddim:50:4 ddpm:1000:1 --output results.json

A setting is `scheduler[:steps[:guidance_scale[:option,option,...]]]`; steps or guidance_scale left out or empty (e.g.
`ddpm`, `ddim::2`) are the values saved with the model. The scheduler is `saved` (the pipeline's own; the default
setting `saved` decodes with everything saved with the model) or one of ddpm, ddim, dpm (DPM-Solver++ 2M;
`algorithm_type=sde-dpmsolver++` for its SDE variant), dpm-single, unipc, deis, pndm, lms, euler, euler-a (Euler
ancestral), heun, kdpm2, kdpm2-a. An option is `clip` / `noclip` (the scheduler's `clip_sample`), `eta=X` (DDIM's η,
passed to the pipeline), `realism=R` (passed to the pipeline), `power=P` (custom timesteps floor(T·(k/N)^P), k = N-1 …
0, passed to the pipeline as `timesteps`: P > 1 puts more steps at low noise) or `key=value`, a scheduler config
override (value parsed as a Python literal, e.g. `thresholding=True`, `solver_order=3`, `use_karras_sigmas=True`);
otherwise the saved config is used as is. Each setting reports `model_evals`, the UNet evaluations per image that its
decode made (Heun makes two per step).
`--prior FOLDER` decodes every pipeline's encoder with another prior (unet/ + scheduler/) instead of its own.
`--num_samples_per_code K` (K >= 2) decodes each code K times: `l2` stays the first decode's, `l2_mean_of_k` is the L2
of the mean of the K decodes (the MMSE proxy) and `l2_between_decodes` the L2 between two decodes of the same code.
`--guidance_log_snr_range LOW HIGH` applies the encoder term only at steps whose log-SNR lies in [LOW, HIGH], and
`--realism R` sets the pipeline's realism, in every setting (see `ScoreVAEPipeline.__call__`; default: the model's).
Each image is decoded with noise seeded by (`--seed`, its index in the test set), so a run's numbers do not depend on
the batch size or the number of processes. `--save_decodes` keeps every setting's decodes.

It runs unchanged on several processes: `accelerate launch --multi_gpu --num_processes 8 examples/evaluate_scorevae.py
...` or `torchrun --nproc_per_node 2 examples/evaluate_scorevae.py ...` (CPU processes on gloo). Each process decodes
a contiguous share of the images; the main process gathers the decodes, computes every metric (the Fréchet distance
on all the images) and alone writes `--output`, which records `num_processes`.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import time

import diffusers
import numpy as np
import torch

from diffusers_scorevae import ScoreVAEPipeline
from diffusers_scorevae.data import FASHION_MNIST_DIR, load_fashion_mnist
from diffusers_scorevae.evaluation import (
    beta_vae_metrics,
    decode_metrics,
    decode_settings,
    gather_in_order,
    kl_rate,
    process_device,
    process_share,
    process_state,
    reconstruction_metrics,
    scorevae_decode_samples,
)

SCHEDULERS = {
    "ddpm": diffusers.DDPMScheduler,
    "ddim": diffusers.DDIMScheduler,
    "dpm": diffusers.DPMSolverMultistepScheduler,
    "dpm-single": diffusers.DPMSolverSinglestepScheduler,
    "unipc": diffusers.UniPCMultistepScheduler,
    "deis": diffusers.DEISMultistepScheduler,
    "pndm": diffusers.PNDMScheduler,
    "lms": diffusers.LMSDiscreteScheduler,
    "euler": diffusers.EulerDiscreteScheduler,
    "euler-a": diffusers.EulerAncestralDiscreteScheduler,
    "heun": diffusers.HeunDiscreteScheduler,
    "kdpm2": diffusers.KDPM2DiscreteScheduler,
    "kdpm2-a": diffusers.KDPM2AncestralDiscreteScheduler,
}


SAVED = "saved"  # the setting's scheduler: the one saved with the pipeline


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipelines", nargs="+", required=True, help="ScoreVAEPipeline folders or Hub ids.")
    parser.add_argument("--prior", type=str, default=None, help="Decode with this prior (unet/ + scheduler/) instead.")
    parser.add_argument("--beta_vae", type=str, default=None)
    parser.add_argument("--classifier", type=str, default=None)
    parser.add_argument("--fashion_mnist_dir", type=str, default=FASHION_MNIST_DIR)
    parser.add_argument("--num_images", type=int, default=1000, help="First N test images.")
    parser.add_argument(
        "--first_image",
        type=int,
        default=0,
        help="Start at this test image (each image keeps the noise seed a run from image 0 would give it).",
    )
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument(
        "--settings", nargs="+", default=["saved"], help="Decode settings (default: all saved with the model)."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--num_samples_per_code", type=int, default=1, help="Decodes per code (K >= 2 adds l2_mean_of_k, ...)."
    )
    parser.add_argument(
        "--guidance_log_snr_range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="Guide only the steps whose log-SNR lies in [LOW, HIGH] (HIGH may be inf; default: the model's).",
    )
    parser.add_argument(
        "--realism", type=float, default=None, help="The pipeline's realism in [0, 1] (default: the model's)."
    )
    parser.add_argument("--output", type=str, required=True, help="JSON file to write.")
    parser.add_argument("--save_reconstructions", type=int, default=0, help="Also save the first N as a PNG grid.")
    parser.add_argument(
        "--save_decodes",
        action="store_true",
        help="Also save every setting's decodes (K, N, C, H, W) as float32 .npy next to --output.",
    )
    parser.add_argument("--device", type=str, default=None, help="Default: this process's accelerator (or the CPU).")
    args = parser.parse_args(input_args)
    if args.guidance_log_snr_range is not None:
        args.guidance_log_snr_range = tuple(args.guidance_log_snr_range)  # as the pipeline takes it
    if args.num_samples_per_code < 1:
        raise ValueError(f"`--num_samples_per_code` must be at least 1, got {args.num_samples_per_code}.")
    if args.classifier is not None and args.num_images < 2:
        raise ValueError(f"`--num_images` must be at least 2 for the Fréchet distance, got {args.num_images}.")
    return args


def parse_setting(setting: str):
    """`scheduler[:steps[:guidance_scale[:option,...]]]` -> (scheduler, steps, γ, config overrides, pipeline kwargs);
    steps and γ are `None` (the model's) where left out or empty."""
    parts = setting.split(":")
    if not 1 <= len(parts) <= 4:
        raise ValueError(f"setting {setting!r} must be scheduler[:steps[:guidance_scale[:option,option,...]]].")
    name, steps, gamma = (parts + ["", ""])[:3]
    if name not in SCHEDULERS and name != SAVED:
        raise ValueError(f"setting {setting!r}: scheduler {name!r} is not {SAVED!r} or one of {sorted(SCHEDULERS)}.")
    overrides, pipeline_kwargs = {}, {}
    for option in parts[3].split(",") if len(parts) == 4 and parts[3] else []:
        if option in ("clip", "noclip"):
            overrides["clip_sample"] = option == "clip"
        elif "=" in option:
            key, value = option.split("=", 1)
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):  # a bare word, e.g. algorithm_type=sde-dpmsolver++
                pass
            (pipeline_kwargs if key in ("eta", "power", "realism") else overrides)[key] = value
        else:
            raise ValueError(f"setting {setting!r}: option {option!r} must be clip, noclip or key=value.")
    try:
        steps, gamma = int(steps) if steps else None, float(gamma) if gamma else None
    except ValueError:
        raise ValueError(f"setting {setting!r}: steps must be an integer and guidance_scale a number.") from None
    return name, steps, gamma, overrides, pipeline_kwargs


def power_timesteps(num_train_timesteps: int, steps: int, power: float) -> list[int]:
    """Descending timesteps floor(T·(k/N)^power) for k = N-1 … 0 without repeats: power 1 is the "leading" grid of
    N steps, power > 1 puts more of them at low noise (and repeats at the low end merge, so there may be fewer)."""
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}.")
    grid = {int(num_train_timesteps * (k / steps) ** power) for k in range(steps)}
    return sorted(grid, reverse=True)


def output_stem(output: str, pipeline: str, setting: str) -> str:
    """`{output without .json}-{pipeline folder name}-{setting with : as _}`: where a setting's extra files go."""
    name = os.path.basename(os.path.normpath(pipeline))
    return f"{os.path.splitext(output)[0]}-{name}-{setting.replace(':', '_')}"


def decodes_path(output: str, pipeline: str, setting: str) -> str:
    return output_stem(output, pipeline, setting) + "-decodes.npy"


def make_scheduler(name: str, config, overrides: dict | None = None):
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler {name!r} is not one of {sorted(SCHEDULERS)}.")
    return SCHEDULERS[name].from_config(config, **(overrides or {}))


def main(args):
    from accelerate.utils import gather_object

    from diffusers_scorevae.models.beta_vae import BetaVAE
    from diffusers_scorevae.models.classifier import FashionMNISTClassifier

    state = process_state(args.device)  # one process, or one of those `accelerate launch` / `torchrun` started
    is_main = state.is_main_process
    device = process_device(state, args.device)
    images, labels = load_fashion_mnist("test", data_dir=args.fashion_mnist_dir)
    if not 0 <= args.first_image < len(images):
        raise ValueError(f"`--first_image` must be in [0, {len(images)}), got {args.first_image}.")
    chosen = images[args.first_image : args.first_image + args.num_images]
    originals = torch.from_numpy(chosen).float()[:, None] / 255.0
    share = process_share(len(originals), state)  # this process's images
    indices = range(args.first_image + share.start, args.first_image + share.stop)  # their seeds' indices
    classifier = None
    if args.classifier and is_main:
        classifier = FashionMNISTClassifier.from_pretrained(args.classifier).to(device).eval()
    fd = args.classifier is not None
    results = {
        "num_images": len(originals),
        "first_image": args.first_image,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "num_processes": state.num_processes,
        "fashion_mnist_dir": args.fashion_mnist_dir,
        "beta_vae_path": args.beta_vae,
        "classifier": args.classifier,
        "prior": args.prior,
        "num_samples_per_code": args.num_samples_per_code,
        "guidance_log_snr_range": args.guidance_log_snr_range,
        "realism": args.realism,
        "originals": {"sharpness": reconstruction_metrics(originals, originals)["sharpness"]},
    }

    def write():
        if is_main:
            with open(args.output, "w") as f:
                json.dump(results, f, indent=2)

    if args.beta_vae and is_main:
        model = BetaVAE.from_pretrained(args.beta_vae).to(device).eval()
        results["beta_vae"] = beta_vae_metrics(model, originals, classifier, fd)[1]
        print("beta_vae", results["beta_vae"], flush=True)

    for path in args.pipelines:
        pipe = ScoreVAEPipeline.from_pretrained(path)
        if args.prior is not None:
            pipe = ScoreVAEPipeline.from_pretrained(args.prior, encoder=pipe.encoder)
        pipe.to(device)
        kl = kl_rate(pipe.encoder, originals).mean().item() if is_main else None  # the same for every setting
        base_config, base_class = pipe.scheduler.config, type(pipe.scheduler)
        takes = set(inspect.signature(type(pipe).__call__).parameters)
        unet_calls = []  # batch sizes of the UNet's forward calls, for the model evaluations per image
        hook = pipe.unet.register_forward_hook(lambda module, inputs, output: unet_calls.append(inputs[0].shape[0]))
        for setting in args.settings:
            name, steps, gamma, overrides, pipeline_kwargs = parse_setting(setting)
            if name == SAVED:  # the scheduler the pipeline was saved with
                pipe.scheduler = base_class.from_config(base_config, **overrides)
            else:
                pipe.scheduler = make_scheduler(name, base_config, overrides)
            if "power" in pipeline_kwargs:  # custom timesteps, denser at low noise for power > 1
                if steps is None:
                    raise ValueError(f"setting {setting!r}: power=P needs the number of steps.")
                pipeline_kwargs["timesteps"] = power_timesteps(
                    pipe.scheduler.config.num_train_timesteps, steps, pipeline_kwargs.pop("power")
                )
            if "clip_sample" in overrides and "clip_sample" in takes:  # a pipeline that clips only when asked
                pipeline_kwargs["clip_sample"] = overrides["clip_sample"]
            if args.realism is not None:
                pipeline_kwargs.setdefault("realism", args.realism)
            unet_calls.clear()
            start = time.time()
            part = scorevae_decode_samples(
                pipe,
                originals[share.start : share.stop],
                args.batch_size,
                steps,
                gamma,
                seed=args.seed,
                num_samples_per_code=args.num_samples_per_code,
                progress=False,
                guidance_log_snr_range=args.guidance_log_snr_range,
                pipeline_kwargs=pipeline_kwargs,
                indices=indices,
            )
            decodes = gather_in_order(part, share.start, state, dim=1)
            calls = sum(gather_object([sum(unet_calls)])) if state.num_processes > 1 else sum(unet_calls)
            if not is_main:
                continue
            seconds = (time.time() - start) / args.num_samples_per_code  # one decode of every image (wall time)
            reconstructions = decodes[0]
            entry = decode_metrics(originals, decodes, classifier, fd)
            entry["kl"] = kl
            entry["seconds"] = seconds
            entry["model_evals"] = calls / (len(originals) * args.num_samples_per_code)
            entry.update(
                decode_settings(
                    pipe,
                    num_inference_steps=steps,
                    guidance_scale=gamma,
                    guidance_log_snr_range=args.guidance_log_snr_range,
                    realism=pipeline_kwargs.get("realism"),
                    clip_sample=pipeline_kwargs.get("clip_sample"),
                )
            )
            if args.save_decodes:
                target = decodes_path(args.output, path, setting)
                np.save(target, decodes.numpy(), allow_pickle=False)
                entry["decodes"] = os.path.basename(target)  # next to the JSON
            results.setdefault("scorevae", {}).setdefault(path, {})[setting] = entry
            print(path, setting, entry, flush=True)
            write()  # after every setting, so an interrupted run keeps what it measured
            if args.save_reconstructions:
                from diffusers_scorevae.visualization import save_rows

                n = args.save_reconstructions
                save_rows([originals[:n], reconstructions[:n]], output_stem(args.output, path, setting) + ".png")

        hook.remove()

    write()


if __name__ == "__main__":
    main(parse_args())
