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
import warnings

import numpy as np
import torch

from . import evaluation, loading

# Deprecated: the decoding settings now travel with the model (its encoder config / model_index.json,
# `ScoreVAEPipeline.decode_defaults`), and the command's flags default to None = the model's. These names stay for
# one release, with a FutureWarning (module `__getattr__` below), at the values the command used to default to.
_DEPRECATED_DEFAULTS = {
    "DEFAULT_STEPS": 50,
    "DEFAULT_GUIDANCE": 3.5,
    "DEFAULT_SCHEDULER": "ddpm",
    "DEFAULT_CLIP_SAMPLE": False,
    "DEFAULT_GUIDANCE_LOG_SNR_RANGE": (-6.0, float("inf")),
    "DEFAULT_INTERPOLATE_LOG_SNR_RANGE": (2.0, float("inf")),
}


def _deprecated(old: str, new: str):
    warnings.warn(
        f"`diffusers_scorevae.cli.{old}` is deprecated and will be removed in the next release; {new}.",
        FutureWarning,
        stacklevel=3,
    )


def __getattr__(name: str):
    if name in _DEPRECATED_DEFAULTS:
        _deprecated(name, "decoding settings are saved with the model (`pipe.decode_defaults`)")
        return _DEPRECATED_DEFAULTS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve(name_or_path: str) -> str:
    """Deprecated alias of [`diffusers_scorevae.loading.resolve`]."""
    _deprecated("resolve", "use `diffusers_scorevae.loading.resolve`")
    return loading.resolve(name_or_path)


def load_pipeline(pipeline, prior=None, scheduler=None, device=None, clip_sample=None):
    """Deprecated alias of [`diffusers_scorevae.loading.load_pipeline`]."""
    _deprecated("load_pipeline", "use `diffusers_scorevae.loading.load_pipeline`")
    return loading.load_pipeline(pipeline, prior, scheduler, device, clip_sample)


def compare(pipe, images, args, device=None, beta_vae_path=None, classifier_path=None, num_samples_per_code=1,
            fd=False):  # fmt: skip
    """Deprecated: [`diffusers_scorevae.evaluation.compare`] takes the settings as keyword arguments."""
    _deprecated("compare", "use `diffusers_scorevae.evaluation.compare` with keyword arguments")
    return evaluation.compare(
        pipe, images, beta_vae=beta_vae_path, classifier=classifier_path, num_samples_per_code=num_samples_per_code,
        fd=fd, **_decode_kwargs(args), batch_size=args.batch_size, seed=args.seed, prior=args.prior or args.pipeline,
    )  # fmt: skip


def bits_per_dim_metrics(pipe, images, args) -> dict:
    """Deprecated: [`diffusers_scorevae.evaluation.bits_per_dim_metrics`] takes keyword arguments."""
    _deprecated("bits_per_dim_metrics", "use `diffusers_scorevae.evaluation.bits_per_dim_metrics`")
    return evaluation.bits_per_dim_metrics(
        pipe, images, batch_size=args.batch_size, seed=args.seed, num_sampled_timesteps=args.num_sampled_timesteps
    )


_device = loading.default_device  # private; the app imported it


def _decode_kwargs(args) -> dict:
    """The decode's settings from the flags; `None` where a flag was not given (= the model's)."""
    log_snr_range = getattr(args, "guidance_log_snr_range", None)
    return {
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "guidance_log_snr_range": None if log_snr_range is None else tuple(log_snr_range),
        "realism": getattr(args, "realism", None),
        "clip_sample": args.clip_sample,
    }


def _load(args, scheduler=None, clip_sample=None):
    return loading.load_pipeline(args.pipeline, args.prior, scheduler, args.device, clip_sample)


def cmd_demo(args):
    from .bundled import bundled_test_images
    from .visualization import save_rows

    images, _ = bundled_test_images()
    if not 1 <= args.num_images <= len(images):
        raise ValueError(f"--num-images {args.num_images} must be between 1 and {len(images)} (the bundled images).")
    images = torch.from_numpy(images[: args.num_images]).float()[:, None] / 255.0
    pipe = _load(args, args.scheduler, args.clip_sample)
    scorevae, baseline, metrics = evaluation.compare(
        pipe,
        images,
        beta_vae=args.beta_vae,
        classifier=args.classifier,
        batch_size=args.batch_size,
        seed=args.seed,
        prior=args.prior or args.pipeline,
        **_decode_kwargs(args),
    )
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
    if args.bits_per_dim:
        for flag, value in (("--num-samples-per-code", args.num_samples_per_code != 1),
                            ("--guidance-log-snr-range", args.guidance_log_snr_range is not None),
                            ("--realism", args.realism is not None)):  # fmt: skip
            if value:
                raise ValueError(f"{flag} applies to reconstructions, not to --bits-per-dim.")
    elif args.num_images < 2:
        raise ValueError(f"--num-images must be at least 2 for the Fréchet distance, got {args.num_images}.")
    # one process, or one of several started by `accelerate launch` / `torchrun` (each decodes a share of the images)
    state = evaluation.process_state(args.device)
    if args.dataset_name is not None:
        images, _ = load_fashion_mnist_from_hub("test", dataset_name=args.dataset_name)
    else:
        images, _ = load_fashion_mnist("test", data_dir=args.fashion_mnist_dir)
    images = torch.from_numpy(images[: args.num_images]).float()[:, None] / 255.0
    device = evaluation.process_device(state, args.device)
    pipe = loading.load_pipeline(args.pipeline, args.prior, args.scheduler, device, args.clip_sample)
    if args.bits_per_dim:
        if not state.is_main_process:  # one random stream over all the images: the main process computes the bound
            return
        metrics = evaluation.bits_per_dim_metrics(
            pipe, images, batch_size=args.batch_size, seed=args.seed, num_sampled_timesteps=args.num_sampled_timesteps
        )
        metrics["num_processes"] = state.num_processes
        for key, value in metrics.items():
            print(f"{key}: {value}")
    else:
        _, _, metrics = evaluation.compare(
            pipe,
            images,
            beta_vae=args.beta_vae,
            classifier=args.classifier,
            batch_size=args.batch_size,
            seed=args.seed,
            num_samples_per_code=args.num_samples_per_code,
            fd=True,
            prior=args.prior or args.pipeline,
            state=state,
            **_decode_kwargs(args),
        )
        if not state.is_main_process:
            return
        _print_metrics(metrics)
    if args.output is not None:
        with open(args.output, "w") as f:
            json.dump(metrics, f, indent=2)
        print(f"wrote {args.output}")


def cmd_interpolate(args):
    import PIL.Image

    from .interpolation import interpolation_grid

    # z+xT needs DDIM inversion, which only inverts a decode that does not clip x̂_0
    pipe = _load(args, "ddim", clip_sample=False)
    settings = _decode_kwargs(args)
    # None: the pipeline's own (its invert default is the encoder's inversion range)
    kwargs = {key: settings[key] for key in ("num_inference_steps", "guidance_scale") if settings[key] is not None}
    grid = interpolation_grid(
        pipe,
        PIL.Image.open(args.image_a),
        PIL.Image.open(args.image_b),
        num_points=args.num_points,
        generator=torch.Generator().manual_seed(args.seed),
        scale=3,
        guidance_log_snr_range=settings["guidance_log_snr_range"],
        **kwargs,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    grid.save(args.output)
    print(f"wrote {args.output}")


def cmd_reconstruct(args):
    import PIL.Image

    from .visualization import save_rows

    pipe = _load(args, args.scheduler, args.clip_sample)
    images = [PIL.Image.open(path) for path in args.images]
    originals = pipe.preprocess(images).cpu().add(1).div(2)
    out = pipe(
        image=images,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="pt",
        **evaluation.decode_call_kwargs(pipe, **_decode_kwargs(args)),
    )
    os.makedirs(args.output_dir, exist_ok=True)
    for path, image in zip(args.images, pipe.numpy_to_pil(out.images.cpu().permute(0, 2, 3, 1).numpy())):
        stem = os.path.splitext(os.path.basename(path))[0]
        image.save(os.path.join(args.output_dir, f"{stem}_reconstruction.png"))
    save_rows([originals, out.images.cpu()], os.path.join(args.output_dir, "grid.png"), ["original", "ScoreVAE"], 3)
    np.save(os.path.join(args.output_dir, "latent_codes.npy"), out.latent_codes.cpu().numpy())
    print(f"wrote {len(images)} reconstructions, grid.png and latent_codes.npy to {args.output_dir}")


def cmd_app(args):
    from .app import launch, require_gradio  # imported here only: the app never imports the command

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


def _add_decoding_args(parser, realism=True):
    parser.add_argument("--pipeline", default="fashion-mnist", help="Bundled name, folder or Hub id of the pipeline.")
    parser.add_argument(
        "--prior", default=None, help="Decode with this prior instead (bundled name, folder or Hub id)."
    )
    model = "default: the value saved with the model"
    parser.add_argument("--num-inference-steps", type=int, default=None, help=f"Denoising steps ({model}).")
    parser.add_argument("--guidance-scale", type=float, default=None, help=f"γ, the encoder term's weight ({model}).")
    parser.add_argument(
        "--guidance-log-snr-range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="Apply the encoder term only at steps whose log-SNR lies in [LOW, HIGH] (the encoder does not run at the "
        f"others; {model}). HIGH may be inf; for every step give a LOW below every step's, e.g. -100 inf (argparse "
        "reads -inf as an option).",
    )
    if realism:
        parser.add_argument(
            "--realism",
            type=float,
            default=None,
            metavar="R",
            help="Trade distortion for realism, from 0 (closest to the original) to 1 (most realistic); see "
            f"ScoreVAEPipeline.__call__ ({model}).",
        )
    parser.add_argument(
        "--scheduler", choices=list(loading.SCHEDULERS), default=None, help="Override the pipeline's scheduler type."
    )
    parser.add_argument(
        "--clip-sample",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Clip the scheduler's x̂_0 to [-1, 1] at every step (default: the saved scheduler's; guided decodes do "
        "not clip unless asked, and clipping with the encoder term costs reconstruction quality).",
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
    _add_decoding_args(interpolate, realism=False)
    interpolate.set_defaults(func=cmd_interpolate)

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
    except (ValueError, OSError) as error:  # bad arguments; files that are missing, damaged or not in the cache
        print(f"scorevae {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
