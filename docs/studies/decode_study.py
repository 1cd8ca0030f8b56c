#!/usr/bin/env python
"""Decode variants that a scheduler alone cannot express, measured like `examples/evaluate_scorevae.py` does: the same
first N test images, the same seeds, the same metrics, UNet evaluations per image counted by a forward hook.

Variants (each a `name:steps:gamma[:param]` string):
  ddpm:STEPS:GAMMA                    the baseline, DDPM as configured in the pipeline (`--noclip`: clip_sample=False)
  pc:STEPS:GAMMA:SNR                  DDPM predictor + one Langevin corrector step per level (Song et al. 2021,
                                      LangevinCorrector for the VP SDE, signal-to-noise ratio SNR) with the guided
                                      score −ε̂_cond / σ_t; STEPS predictor steps make 2·STEPS − 1 UNet evaluations
  gsched:STEPS:GAMMA_HI:GAMMA_LO      γ interpolated linearly in log-SNR from GAMMA_HI at the first step to GAMMA_LO
                                      at the last (a noise-level-dependent guidance scale)
  range:STEPS:GAMMA:LOW/HIGH          guidance only where λ_t ∈ [LOW, HIGH] (the pipeline's guidance_log_snr_range)
  every:STEPS:GAMMA:K                 the encoder's score ∇ log q(z | x_t) computed at every K-th step only and reused
                                      (with the current γ σ_t) at the K − 1 steps after it: 1/K of the encoder's cost

    OMP_NUM_THREADS=1 python docs/studies/decode_study.py --num_images 100 --variants ddpm:50:2 pc:25:2:0.1 \
        --output runs/sweep/study.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from diffusers_scorevae import ScoreVAEPipeline
from diffusers_scorevae.bundled import pretrained_path
from diffusers_scorevae.data import FASHION_MNIST_DIR, load_fashion_mnist
from diffusers_scorevae.evaluation import reconstruction_metrics, scorevae_decode_samples
from diffusers_scorevae.models.classifier import FashionMNISTClassifier
from diffusers_scorevae.noise import scheduler_log_snr


class LangevinCorrector:
    """`callback_on_step_end`: after each predictor step, one Langevin step at the new noise level with the guided
    score (the pipeline's own `guide`), step size from the target signal-to-noise ratio as in Song et al. (2021)."""

    tensor_inputs = ["latents", "latent_codes"]

    def __init__(self, snr: float, generator_seed: int = 0):
        self.snr = snr
        self.generator = torch.Generator().manual_seed(generator_seed)

    def __call__(self, pipe, i, t, callback_kwargs):
        timesteps = pipe.scheduler.timesteps
        if i + 1 >= len(timesteps):
            return callback_kwargs
        x, codes = callback_kwargs["latents"], callback_kwargs["latent_codes"]
        t_next = timesteps[i + 1]
        model_output = pipe.unet(x, t_next).sample
        epsilon = pipe.guide(model_output, x, t_next, codes)
        alphas_cumprod = pipe.scheduler.alphas_cumprod
        sigma = (1 - alphas_cumprod[t_next]).sqrt()
        alpha = pipe.scheduler.alphas[t_next]
        score = -epsilon / sigma
        noise = torch.randn(x.shape, generator=self.generator).to(x)
        grad_norm = score.flatten(1).norm(dim=1).mean()
        noise_norm = noise.flatten(1).norm(dim=1).mean()
        step_size = (self.snr * noise_norm / grad_norm) ** 2 * 2 * alpha
        x = x + step_size * score + (2 * step_size).sqrt() * noise
        return {"latents": x}


class GuidanceSchedule:
    """`callback_on_step_end`: set γ for the next step, linear in log-SNR between the first and the last step."""

    tensor_inputs = ["latents"]

    def __init__(self, gamma_hi: float, gamma_lo: float):
        self.gamma_hi, self.gamma_lo = gamma_hi, gamma_lo

    def gamma(self, scheduler, t) -> float:
        first, last = (scheduler_log_snr(scheduler, scheduler.timesteps[k]).item() for k in (0, -1))
        lam = scheduler_log_snr(scheduler, t).item()
        w = (lam - first) / (last - first)
        return self.gamma_hi + w * (self.gamma_lo - self.gamma_hi)

    def __call__(self, pipe, i, t, callback_kwargs):
        timesteps = pipe.scheduler.timesteps
        if i + 1 < len(timesteps):
            pipe._guidance_scale = self.gamma(pipe.scheduler, timesteps[i + 1])
        return callback_kwargs


class ReusedScore:
    """Patches `pipe.guide` so that the encoder runs at every `k`-th guided call only; the other calls reuse its last
    score ∇ log q(z | x_t, λ_t) with their own σ_t and γ. `restore()` undoes the patch."""

    def __init__(self, pipe, k: int):
        from diffusers_scorevae.noise import encoder_score, guided_model_output

        self.pipe, self.k, self.calls, self.score = pipe, k, 0, None
        original = pipe.guide

        def guide(model_output, model_input, timestep, latent_codes):
            log_snr = scheduler_log_snr(pipe.scheduler, timestep)
            if timestep == pipe.scheduler.timesteps[0]:  # a new decode starts: never reuse the last decode's score
                self.calls = 0
            if self.calls % self.k == 0 or self.score is None or self.score.shape != model_input.shape:
                self.score = encoder_score(pipe.encoder, model_input, log_snr.float(), latent_codes)
            self.calls += 1
            return guided_model_output(
                model_output,
                model_input,
                self.score,
                log_snr,
                pipe.guidance_scale,
                pipe.scheduler.config.prediction_type,
            )

        pipe.guide = guide
        self.restore = lambda: setattr(pipe, "guide", original)


def variant_kwargs(variant: str):
    kind, steps, *rest = variant.split(":")
    steps = int(steps)
    if kind == "ddpm":
        return steps, float(rest[0]), {}
    if kind == "pc":
        corrector = LangevinCorrector(float(rest[1]))
        return steps, float(rest[0]), {
            "callback_on_step_end": corrector,
            "callback_on_step_end_tensor_inputs": corrector.tensor_inputs,
        }
    if kind == "gsched":
        schedule = GuidanceSchedule(float(rest[0]), float(rest[1]))
        return steps, schedule.gamma_hi, {"callback_on_step_end": schedule, "callback_on_step_end_tensor_inputs": []}
    if kind == "range":
        low, high = (float(v) for v in rest[1].split("/"))
        return steps, float(rest[0]), {"guidance_log_snr_range": (low, high)}
    if kind == "every":
        return steps, float(rest[0]), {"reuse_every": int(rest[1])}
    raise ValueError(f"variant {variant!r}: kind {kind!r} is not one of ddpm, pc, gsched, range, every.")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=pretrained_path("fashion-mnist"))
    parser.add_argument("--classifier", default=pretrained_path("fashion-mnist-classifier"))
    parser.add_argument("--fashion_mnist_dir", default=FASHION_MNIST_DIR)
    parser.add_argument("--num_images", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--noclip", action="store_true", help="Decode with the scheduler's clip_sample=False.")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    images, _ = load_fashion_mnist("test", data_dir=args.fashion_mnist_dir)
    originals = torch.from_numpy(images[: args.num_images]).float()[:, None] / 255.0
    classifier = FashionMNISTClassifier.from_pretrained(args.classifier).eval()
    pipe = ScoreVAEPipeline.from_pretrained(args.pipeline)
    if args.noclip:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, clip_sample=False)
    calls = []
    pipe.unet.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    results = {"num_images": len(originals), "pipeline": args.pipeline, "noclip": args.noclip, "variants": {}}
    for variant in args.variants:
        steps, gamma, kwargs = variant_kwargs(variant)
        range_ = kwargs.pop("guidance_log_snr_range", None)
        reuse = ReusedScore(pipe, kwargs.pop("reuse_every")) if "reuse_every" in kwargs else None
        calls.clear()
        start = time.time()
        decodes = scorevae_decode_samples(
            pipe, originals, args.batch_size, steps, gamma, seed=args.seed, progress=False,
            guidance_log_snr_range=range_, pipeline_kwargs=kwargs,
        )
        if reuse is not None:
            reuse.restore()
        entry = reconstruction_metrics(originals, decodes[0], classifier, fd=len(originals) > 1)
        entry["seconds"] = time.time() - start
        entry["model_evals"] = sum(calls) / len(originals)
        results["variants"][variant] = entry
        print(variant, {k: round(v, 4) for k, v in entry.items()}, flush=True)
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
