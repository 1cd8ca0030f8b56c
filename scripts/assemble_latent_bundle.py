"""Assemble the latent Fashion-MNIST bundle from the output of the encoder stage of scripts/train_latent_bundle.sh: a
ScoreVAEPipeline folder (unet/, scheduler/, encoder/, vae/) written with float16 weights, as the pixel bundle.

    python scripts/assemble_latent_bundle.py --pipeline runs/latent/encoder \
        --dest diffusers_scorevae/pretrained/fashion-mnist-latent

`--dest` is replaced atomically (written to DEST.tmp, then renamed).
"""

import argparse
import glob
import os
import shutil

import diffusers
from safetensors.torch import load_file, save_file

from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline

BUNDLE_NAME = "fashion-mnist-latent"


# Copied from scripts/to_fp16.py (each script reads alone; no script imports another)
def to_fp16(folder: str):
    """Rewrite every `*.safetensors` under `folder` (recursively) with float16 floating-point tensors."""
    for path in glob.glob(os.path.join(folder, "**", "*.safetensors"), recursive=True):
        tensors = load_file(path)
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(tensors, path, metadata={"format": "pt"})
        print(f"{path}: float16")


def main(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", required=True, help="The ScoreVAEPipeline folder of the encoder stage.")
    parser.add_argument("--dest", required=True, help="Bundle folder to write (replaced).")
    parser.add_argument("--scheduler", default="ddpm", choices=["ddpm", "ddim"], help="The bundle's scheduler class.")
    args = parser.parse_args(input_args)

    pipe = ScoreVAEPipeline.from_pretrained(args.pipeline)
    if getattr(pipe, "vae", None) is None:
        raise ValueError(f"--pipeline {args.pipeline} has no vae/: the latent bundle needs a latent pipeline.")
    scheduler_cls = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler}[args.scheduler]
    # the bundled encoder's prior is the bundled pipeline's own prior (not the training machine's folder)
    record = dict(pipe.encoder.config.get("prior") or {})
    record["name_or_path"] = f"diffusers_scorevae.pretrained_path('{BUNDLE_NAME}')"
    encoder = ScoreVAEEncoder.from_config(pipe.encoder.config, prior=record)
    encoder.load_state_dict(pipe.encoder.state_dict())
    bundle = ScoreVAEPipeline(
        unet=pipe.unet, scheduler=scheduler_cls.from_config(pipe.scheduler.config), encoder=encoder, vae=pipe.vae
    )
    tmp = args.dest.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    bundle.save_pretrained(tmp)
    to_fp16(tmp)
    shutil.rmtree(args.dest, ignore_errors=True)
    os.rename(tmp, args.dest)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(args.dest) for f in files)
    print(f"bundle {BUNDLE_NAME}: {size / 1e6:.2f} MB in {args.dest}")


if __name__ == "__main__":
    main()
