"""The `scorevae` command: reconstruct with the bundled Fashion-MNIST ScoreVAE and compare it with a β-VAE.

    scorevae demo                        # bundled test images -> scorevae-demo/reconstructions.png + metrics.json
    scorevae reconstruct a.png b.png --output-dir out
    scorevae evaluate --num-images 1000  # Fashion-MNIST test set (Debian's dataset-fashion-mnist or the Hub)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

# The command's decoding settings, chosen by the sampler study in docs/results.md (first 100, then 500 test images,
# the bundled encoder): DDPM (ancestral, η = 1) with 50 steps, x̂_0 not clipped (clipping it cost 12% L2 at DDPM
# and broke every DDIM decode with guidance), and the encoder term only where log-SNR ≥ -6 (the 11 noisiest of the 50
# steps carry nothing of the code: skipping them cost no L2 and saves a fifth of the encoder's calls). γ = 3.5 for the
# bundled 16-wide encoder (first 500 test images, L2 2.525 / 2.453 / 2.411 / 2.392 / 2.396 at γ 2 / 2.5 / 3 / 3.5 / 4).
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 3.5
DEFAULT_SCHEDULER = "ddpm"
DEFAULT_CLIP_SAMPLE = False
DEFAULT_GUIDANCE_LOG_SNR_RANGE = (-6.0, float("inf"))
# `scorevae interpolate` (and the app's Interpolate tab) guide the DDIM inversion and its decodes only where
# log-SNR ≥ 2: with the posterior-fitted bundled encoder the inverse ODE diverges when it is guided at noisier steps
# (16 bundled test images, DDIM 50, γ 3.5: x_T per-image std up to 25 and round-trip L2 16.6 at ≥ -6, 11.1 at ≥ 0;
# 0.77 at ≥ 2 and 0.78 at ≥ 3, with x_T std ≤ 0.92, where N(0, I) noise has 1; at γ 2 the same picture).
DEFAULT_INTERPOLATE_LOG_SNR_RANGE = (2.0, float("inf"))


def _device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve(name_or_path: str) -> str:
    """A bundled name (see `pretrained_path`), a local folder, or a Hub repo id (returned unchanged)."""
    from .bundled import BUILDABLE, BUNDLED, pretrained_path

    return pretrained_path(name_or_path) if name_or_path in BUNDLED or name_or_path in BUILDABLE else name_or_path


def load_pipeline(
    pipeline: str,
    prior: str | None,
    scheduler: str | None,
    device: torch.device,
    clip_sample: bool | None = DEFAULT_CLIP_SAMPLE,
):
    """The ScoreVAE pipeline, optionally decoding with another prior (its unet + scheduler: a pipeline repo or folder
    in either layout, e.g. `google/ddpm-cifar10-32`) and another scheduler type. `clip_sample` (True/False) overrides
    the scheduler's `clip_sample` where its config has one; None keeps the saved config as it is."""
    import diffusers

    from .models import ScoreVAEEncoder
    from .pipelines import ScoreVAEPipeline

    if prior is None:
        pipe = ScoreVAEPipeline.from_pretrained(resolve(pipeline))
    else:  # the pipeline's encoder alone, beside the other prior
        encoder = ScoreVAEEncoder.from_pretrained(resolve(pipeline), subfolder="encoder")
        pipe = ScoreVAEPipeline.from_pretrained(resolve(prior), encoder=encoder)
    if scheduler is not None:
        classes = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler}
        pipe.scheduler = classes[scheduler].from_config(pipe.scheduler.config)
    if clip_sample is not None and "clip_sample" in pipe.scheduler.config:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, clip_sample=clip_sample)
    return pipe.to(device)


def compare(
    pipe,
    images: torch.Tensor,
    args,
    device,
    beta_vae_path: str | None,
    classifier_path: str | None,
    num_samples_per_code: int = 1,
    fd: bool = False,
):
    """Reconstruct `images` ([0, 1], `[N, 1, 28, 28]`) with ScoreVAE and the β-VAE; metrics of both, each with its
    rate `kl` (nats/image). With `num_samples_per_code` K ≥ 2, ScoreVAE decodes each code K times (`l2` is the first
    decode's); with `fd`, the Fréchet distance of classifier features to the originals.

    A pipeline whose `image_shape` is larger than the images (the 32×32 latent pipeline) reads them padded centrally
    with black and its decodes are cropped back (`evaluation.fit_to_pipeline`): every metric is on the 28×28 pixels,
    the rate is its encoder's KL on the autoencoder's latents, and the `autoencoder` row (vae.decode(vae.encode(x)))
    is the floor of any reconstruction through those latents. The β-VAE is the 28×28 pixel one."""
    from .evaluation import (
        autoencoder_reconstruct,
        beta_vae_metrics,
        decode_metrics,
        fit_to_pipeline,
        kl_rate,
        reconstruction_metrics,
        scorevae_decode_samples,
    )
    from .models.beta_vae import BetaVAE
    from .models.classifier import FashionMNISTClassifier

    classifier = FashionMNISTClassifier.from_pretrained(resolve(classifier_path)).to(device).eval()
    start = time.time()
    decodes = scorevae_decode_samples(
        pipe,
        images,
        args.batch_size,
        args.num_inference_steps,
        args.guidance_scale,
        seed=args.seed,
        num_samples_per_code=num_samples_per_code,
        guidance_log_snr_range=_log_snr_range(args),
    )
    seconds = (time.time() - start) / num_samples_per_code
    scorevae = decodes[0]
    beta_vae = BetaVAE.from_pretrained(resolve(beta_vae_path)).to(device).eval()
    baseline, baseline_metrics = beta_vae_metrics(beta_vae, images, classifier, fd=fd)

    scorevae_metrics = decode_metrics(images, decodes, classifier, fd=fd)
    vae = getattr(pipe, "vae", None)
    scorevae_metrics["kl"] = kl_rate(pipe.encoder, fit_to_pipeline(pipe, images), vae=vae).mean().item()
    metrics = {
        "num_images": len(images),
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "guidance_log_snr_range": _log_snr_range(args),
        "clip_sample": pipe.scheduler.config.get("clip_sample"),
        "scheduler": type(pipe.scheduler).__name__,
        "prior": args.prior or args.pipeline,
        "num_samples_per_code": num_samples_per_code,
        "scorevae": scorevae_metrics,
        "beta_vae": baseline_metrics,
        "originals": {"sharpness": reconstruction_metrics(images, images)["sharpness"]},
        "scorevae_seconds": seconds,  # one decode of every image (the K decodes' time / K)
    }
    if vae is not None:
        metrics["autoencoder"] = reconstruction_metrics(images, autoencoder_reconstruct(pipe, images), classifier)
        metrics["image_shape"] = list(pipe.image_shape)
    return scorevae, baseline, metrics


def cmd_demo(args):
    from .bundled import bundled_test_images
    from .visualization import save_rows

    device = _device(args.device)
    images, _ = bundled_test_images()
    if not 1 <= args.num_images <= len(images):
        raise ValueError(f"--num-images {args.num_images} must be between 1 and {len(images)} (the bundled images).")
    images = torch.from_numpy(images[: args.num_images]).float()[:, None] / 255.0
    pipe = load_pipeline(args.pipeline, args.prior, args.scheduler, device, args.clip_sample)
    scorevae, baseline, metrics = compare(pipe, images, args, device, args.beta_vae, args.classifier)
    os.makedirs(args.output_dir, exist_ok=True)
    save_rows(
        [images, scorevae, baseline],
        os.path.join(args.output_dir, "reconstructions.png"),
        labels=["original", "ScoreVAE", "beta-VAE"],
        scale=3,
    )
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    _print_metrics(metrics)
    print(f"wrote {args.output_dir}/reconstructions.png and {args.output_dir}/metrics.json")


def cmd_evaluate(args):
    from .data import load_fashion_mnist, load_fashion_mnist_from_hub

    if args.num_samples_per_code < 1:
        raise ValueError(f"--num-samples-per-code must be at least 1, got {args.num_samples_per_code}.")
    if args.bits_per_dim and args.num_samples_per_code != 1:
        raise ValueError("--num-samples-per-code applies to reconstructions, not to --bits-per-dim.")
    if args.bits_per_dim and args.guidance_log_snr_range is not None:
        raise ValueError("--guidance-log-snr-range applies to reconstructions, not to --bits-per-dim.")
    if not args.bits_per_dim and args.num_images < 2:
        raise ValueError(f"--num-images must be at least 2 for the Fréchet distance, got {args.num_images}.")
    device = _device(args.device)
    if args.dataset_name is not None:
        images, _ = load_fashion_mnist_from_hub("test", dataset_name=args.dataset_name)
    else:
        images, _ = load_fashion_mnist("test", data_dir=args.fashion_mnist_dir)
    images = torch.from_numpy(images[: args.num_images]).float()[:, None] / 255.0
    pipe = load_pipeline(args.pipeline, args.prior, args.scheduler, device, args.clip_sample)
    if args.bits_per_dim:
        metrics = bits_per_dim_metrics(pipe, images, args)
        for key, value in metrics.items():
            print(f"{key}: {value}")
    else:
        _, _, metrics = compare(
            pipe, images, args, device, args.beta_vae, args.classifier, args.num_samples_per_code, fd=True
        )
        _print_metrics(metrics)
    if args.output is not None:
        with open(args.output, "w") as f:
            json.dump(metrics, f, indent=2)
        print(f"wrote {args.output}")


def bits_per_dim_metrics(pipe, images: torch.Tensor, args) -> dict:
    """Negative ELBO of ScoreVAE and the DDPM bound of the prior alone, in bits/dim, on `images` and on as many
    uniform-noise images (which must score worse)."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randint(0, 256, images.shape, generator=generator).float() / 255.0
    results = {}
    for name, data in (("data", images), ("uniform_noise", noise[: min(len(images), 64)])):
        scorevae, prior = [], []
        for start in tqdm(range(0, len(data), args.batch_size), desc=f"bits/dim ({name})"):
            batch = data[start : start + args.batch_size]
            kwargs = {"generator": generator, "num_sampled_timesteps": args.num_sampled_timesteps}
            scorevae.append(pipe.bits_per_dim(batch, **kwargs).cpu())
            prior.append(pipe.prior_bits_per_dim(batch, **kwargs).cpu())
        scorevae, prior = torch.cat(scorevae), torch.cat(prior)
        results[f"scorevae_bits_per_dim_{name}"] = scorevae.mean().item()
        results[f"prior_bits_per_dim_{name}"] = prior.mean().item()
        results[f"num_images_{name}"] = len(data)
    results["num_sampled_timesteps"] = args.num_sampled_timesteps or "all"
    return results


def cmd_interpolate(args):
    import PIL.Image

    from .interpolation import interpolation_grid

    device = _device(args.device)
    # z+xT needs DDIM inversion, which only inverts a decode that does not clip x̂_0
    pipe = load_pipeline(args.pipeline, args.prior, "ddim", device, clip_sample=False)
    grid = interpolation_grid(
        pipe,
        PIL.Image.open(args.image_a),
        PIL.Image.open(args.image_b),
        num_points=args.num_points,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        generator=torch.Generator().manual_seed(args.seed),
        scale=3,
        guidance_log_snr_range=_log_snr_range(args),
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    grid.save(args.output)
    print(f"wrote {args.output}")


def cmd_reconstruct(args):
    import PIL.Image

    from .visualization import save_rows

    device = _device(args.device)
    pipe = load_pipeline(args.pipeline, args.prior, args.scheduler, device, args.clip_sample)
    images = [PIL.Image.open(path) for path in args.images]
    originals = pipe.preprocess(images).cpu().add(1).div(2)
    out = pipe(
        image=images,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        guidance_log_snr_range=_log_snr_range(args),
        generator=torch.Generator().manual_seed(args.seed),
        output_type="pt",
    )
    os.makedirs(args.output_dir, exist_ok=True)
    for path, image in zip(args.images, pipe.numpy_to_pil(out.images.cpu().permute(0, 2, 3, 1).numpy())):
        stem = os.path.splitext(os.path.basename(path))[0]
        image.save(os.path.join(args.output_dir, f"{stem}_reconstruction.png"))
    save_rows([originals, out.images.cpu()], os.path.join(args.output_dir, "grid.png"), ["original", "ScoreVAE"], 3)
    np.save(os.path.join(args.output_dir, "latent_codes.npy"), out.latent_codes.cpu().numpy())
    print(f"wrote {len(images)} reconstructions, grid.png and latent_codes.npy to {args.output_dir}")


def cmd_app(args):
    from .app import launch, require_gradio

    try:
        require_gradio()
    except ImportError as error:
        print(f"scorevae app: error: {error}", file=sys.stderr)
        raise SystemExit(2)
    launch(pipeline=args.pipeline, server_name=args.host, server_port=args.port, share=args.share, device=args.device)


def _print_metrics(metrics: dict):
    columns = ("kl", "l2", "psnr", "ssim", "sharpness", "class_kept", "fd", "l2_mean_of_k", "l2_between_decodes")
    rows = {name: metrics[name] for name in ("scorevae", "beta_vae", "autoencoder", "originals") if name in metrics}
    columns = [k for k in columns if any(k in row for row in rows.values())]
    widths = [max(12, len(k) + 2) for k in columns]
    first = max(10, *(len(name) + 1 for name in rows))
    print(" " * first + "".join(f"{k:>{w}s}" for k, w in zip(columns, widths)))
    for name, row in rows.items():
        print(
            f"{name:{first}s}" + "".join(f"{row[k]:{w}.4f}" if k in row else " " * w for k, w in zip(columns, widths))
        )
    if "autoencoder" in metrics:
        print(f"autoencoder: vae.decode(vae.encode(x)), the floor of the latent pipeline; "
              f"metrics on the images' pixels "
              f"(the pipeline's {metrics['image_shape']} images padded with black, decodes cropped back)")
    if metrics.get("num_samples_per_code", 1) > 1:
        k = metrics["num_samples_per_code"]
        print(f"l2: one decode per code; l2_mean_of_k: the mean of {k} decodes; l2_between_decodes: two decodes' L2")


def _log_snr_range(args) -> tuple[float, float]:
    """The decode's guidance_log_snr_range: the flag's, else the command's default."""
    if args.guidance_log_snr_range is None:
        return args.default_log_snr_range
    return tuple(args.guidance_log_snr_range)


def _add_decoding_args(parser, default_output=None, log_snr_range=DEFAULT_GUIDANCE_LOG_SNR_RANGE):
    parser.set_defaults(default_log_snr_range=log_snr_range)  # what `_log_snr_range` returns without the flag
    parser.add_argument("--pipeline", default="fashion-mnist", help="Bundled name, folder or Hub id of the pipeline.")
    parser.add_argument(
        "--prior", default=None, help="Decode with this prior instead (bundled name, folder or Hub id)."
    )
    parser.add_argument("--num-inference-steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance-scale", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument(
        "--guidance-log-snr-range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="Apply the encoder term only at steps whose log-SNR lies in [LOW, HIGH] (the encoder does not run at the "
        f"others); default {log_snr_range[0]:g} inf. HIGH may be inf; for every step give a LOW "
        "below every step's, e.g. -100 inf (argparse reads -inf as an option).",
    )
    parser.add_argument(
        "--scheduler", choices=["ddpm", "ddim"], default=None, help="Override the pipeline's scheduler type."
    )
    parser.add_argument(
        "--clip-sample",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_CLIP_SAMPLE,
        help="Clip the scheduler's x̂_0 to [-1, 1] at every step (default: %(default)s; clipping with the encoder term "
        "costs reconstruction quality).",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scorevae", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="Reconstruct bundled Fashion-MNIST test images with ScoreVAE and the β-VAE.")
    demo.add_argument("--output-dir", default="scorevae-demo")
    demo.add_argument("--num-images", type=int, default=16)
    demo.add_argument("--beta-vae", default="fashion-mnist-beta-vae")
    demo.add_argument("--classifier", default="fashion-mnist-classifier")
    _add_decoding_args(demo)
    demo.set_defaults(func=cmd_demo)

    evaluate = sub.add_parser(
        "evaluate",
        help="ScoreVAE vs β-VAE on the Fashion-MNIST test set: rate (KL), distortion, class_kept, Fréchet distance.",
    )
    evaluate.add_argument("--num-images", type=int, default=10000)
    evaluate.add_argument("--fashion-mnist-dir", default=None, help="Folder of the idx files (default: Debian's).")
    evaluate.add_argument(
        "--dataset-name", default=None, help="Hub dataset instead, e.g. zalando-datasets/fashion_mnist"
    )
    evaluate.add_argument("--beta-vae", default="fashion-mnist-beta-vae")
    evaluate.add_argument("--classifier", default="fashion-mnist-classifier")
    evaluate.add_argument("--output", default=None, help="Write the metrics to this JSON file.")
    evaluate.add_argument(
        "--num-samples-per-code",
        type=int,
        default=1,
        help="Decode each code K times: also report the L2 of the mean of the K decodes (the MMSE proxy) and the L2 "
        "between two decodes of the same code (K >= 2).",
    )
    evaluate.add_argument(
        "--bits-per-dim",
        action="store_true",
        help="Report the likelihood bounds (bits/dim) instead of reconstructions.",
    )
    evaluate.add_argument(
        "--num-sampled-timesteps", type=int, default=None, help="Estimate the bound from this many of the T steps."
    )
    _add_decoding_args(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    interpolate = sub.add_parser(
        "interpolate", help="Interpolate between two images (z lerp + x_T slerp, and z alone)."
    )
    interpolate.add_argument("image_a")
    interpolate.add_argument("image_b")
    interpolate.add_argument("--num-points", type=int, default=8)
    interpolate.add_argument("--output", required=True, help="PNG file for the labelled grid.")
    _add_decoding_args(interpolate, log_snr_range=DEFAULT_INTERPOLATE_LOG_SNR_RANGE)
    interpolate.set_defaults(func=cmd_interpolate, num_inference_steps=50)

    reconstruct = sub.add_parser("reconstruct", help="Reconstruct your own images (sized like the pipeline's prior).")
    reconstruct.add_argument("images", nargs="+")
    reconstruct.add_argument("--output-dir", required=True)
    _add_decoding_args(reconstruct)
    reconstruct.set_defaults(func=cmd_reconstruct)

    app = sub.add_parser("app", help="An interactive demo in the browser (Gradio): reconstruct, interpolate, sample.")
    app.add_argument("--pipeline", default="fashion-mnist", help="Bundled name, folder or Hub id of the pipeline.")
    app.add_argument("--port", type=int, default=None, help="Port (default: $GRADIO_SERVER_PORT or 7860).")
    app.add_argument("--host", default=None, help="Address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1).")
    app.add_argument("--share", action="store_true", help="Also ask Gradio for a public link (needs the internet).")
    app.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    app.set_defaults(func=cmd_app)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"scorevae {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
