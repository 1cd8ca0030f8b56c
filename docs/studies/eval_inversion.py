"""Round-trip PSNR of `ScoreVAEPipeline.invert` on the bundled Fashion-MNIST model (the README's inversion table).

For each DDIM scheduler, built as `DDIMScheduler.from_config(prior scheduler config, **changes)`, each step count n and
number k of fixed-point iterations: `inv = pipe.invert(images, num_inference_steps=n, num_fixed_point_iterations=k)`,
then `pipe(latent_codes=inv.latent_codes, latents=inv.latents, num_inference_steps=n)` with the same scheduler. Mean
(and worst) PSNR over the first `--num_images` bundled test images, γ = `--guidance_scale`, seconds of each call.

`invert` refuses a scheduler that clips x̂_0 (`clip_sample=True`, which `from_config` inherits from the DDPM prior, or
`thresholding=True`). For those the script records the refusal and measures why: the round trip when the inversion
ignores the clip (inverting with clip_sample=False, thresholding=False and decoding with the clipping scheduler, what
`invert` did before it refused).

    OMP_NUM_THREADS=1 python docs/studies/eval_inversion.py --fresh_noise --output runs/eval/inversion.md
"""

import argparse
import time

import torch
from diffusers import DDIMScheduler

from diffusers_scorevae import ScoreVAEPipeline, pretrained_path
from diffusers_scorevae.bundled import bundled_test_images
from diffusers_scorevae.metrics import psnr

SCHEDULERS = {
    "clip_sample=False": {"clip_sample": False},
    "clip_sample=True": {},  # what DDIMScheduler.from_config(pipe.scheduler.config) gives for the bundled prior
    "thresholding=True": {"clip_sample": False, "thresholding": True},
}
NO_CLIPPING = {"clip_sample": False, "thresholding": False}


def round_trip(pipe, images, inverse_scheduler, decode_scheduler, steps, iterations, guidance_scale, fresh_noise):
    """(PSNR per image, invert seconds, decode seconds, fresh-noise PSNR per image or None)."""
    pipe.scheduler = inverse_scheduler
    start = time.perf_counter()
    inv = pipe.invert(
        images, num_inference_steps=steps, guidance_scale=guidance_scale, num_fixed_point_iterations=iterations
    )
    invert_seconds = time.perf_counter() - start
    pipe.scheduler = decode_scheduler
    start = time.perf_counter()
    kwargs = {"num_inference_steps": steps, "guidance_scale": guidance_scale, "output_type": "pt"}
    decoded = pipe(latent_codes=inv.latent_codes, latents=inv.latents, **kwargs).images
    decode_seconds = time.perf_counter() - start
    fresh = None
    if fresh_noise:
        fresh = psnr(images, pipe(latent_codes=inv.latent_codes, generator=torch.manual_seed(0), **kwargs).images)
    return psnr(images, decoded), invert_seconds, decode_seconds, fresh


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", default="fashion-mnist", help="bundled name or folder")
    parser.add_argument("--num_images", type=int, default=16)
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument("--fixed_point", type=int, nargs="+", default=[0, 1], help="num_fixed_point_iterations")
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=list(SCHEDULERS))
    parser.add_argument("--guidance_scale", type=float, default=1.0)
    parser.add_argument("--fresh_noise", action="store_true", help="also decode the codes from fresh noise")
    parser.add_argument("--output", default=None, help="also write the table to this file")
    args = parser.parse_args()

    path = pretrained_path(args.pipeline) if "/" not in args.pipeline else args.pipeline
    pipe = ScoreVAEPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    prior_config = pipe.scheduler.config
    images = torch.from_numpy(bundled_test_images()[0][: args.num_images]).float()[:, None] / 255.0

    lines = [
        f"{args.num_images} bundled test images, guidance_scale={args.guidance_scale}, torch threads "
        f"{torch.get_num_threads()}; DDIMScheduler.from_config(prior scheduler config, **changes)",
        "",
        "| DDIM scheduler | inversion | steps | fixed-point iterations | PSNR (dB) | worst (dB) | invert (s) | "
        "decode (s) |" + (" fresh noise (dB) |" if args.fresh_noise else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if args.fresh_noise else ""),
    ]
    print("\n".join(lines), flush=True)

    def report(line):
        print(line, flush=True)
        lines.append(line)

    for name in args.schedulers:
        scheduler = DDIMScheduler.from_config(prior_config, **SCHEDULERS[name])
        inverse_scheduler = scheduler
        inversion = "`invert`"
        if scheduler.config.clip_sample or scheduler.config.thresholding:
            pipe.scheduler = scheduler
            try:
                pipe.invert(images[:1], num_inference_steps=1)
                report(f"| {name} | `invert` | | | did not refuse |")
            except ValueError as error:
                report(f"| {name} | `invert` | | | refused: ValueError: {str(error).split(':')[0]} |")
            inverse_scheduler = DDIMScheduler.from_config(prior_config, **NO_CLIPPING)
            inversion = "ignoring the clip"
        for steps in args.steps:
            for iterations in args.fixed_point:
                schedulers = (inverse_scheduler, scheduler)
                values, invert_seconds, decode_seconds, fresh = round_trip(
                    pipe, images, *schedulers, steps, iterations, args.guidance_scale, args.fresh_noise
                )
                line = (
                    f"| {name} | {inversion} | {steps} | {iterations} | {values.mean():.2f} | {values.min():.2f} | "
                    f"{invert_seconds:.1f} | {decode_seconds:.1f} |"
                )
                report(line + (f" {fresh.mean():.2f} |" if fresh is not None else ""))
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
