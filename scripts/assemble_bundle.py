"""Copy trained models into diffusers_scorevae/pretrained/ (float16 weights on disk) and write the bundled test images.

    python scripts/assemble_bundle.py --prior runs/gpu/prior --encoder runs/encoder-fmnist/encoder \
        --prior_large runs/gpu/prior_large --beta_vae runs/gpu/beta_vae --classifier runs/classifier \
        --scheduler ddpm
"""

import argparse
import glob
import os
import shutil

import diffusers
import numpy as np
from safetensors.torch import load_file, save_file

from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline
from diffusers_scorevae.bundled import PRETRAINED_DIR
from diffusers_scorevae.data import load_fashion_mnist


# Copied from scripts/to_fp16.py (each script reads alone; no script imports another)
def to_fp16(folder: str):
    """Rewrite every `*.safetensors` under `folder` (recursively) with float16 floating-point tensors."""
    for path in glob.glob(os.path.join(folder, "**", "*.safetensors"), recursive=True):
        tensors = load_file(path)
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(tensors, path, metadata={"format": "pt"})
        print(f"{path}: float16")


def copy_model(src, name):
    dst = os.path.join(PRETRAINED_DIR, name)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint*", "*.jsonl", "logs", "validation", "*.log"))
    to_fp16(dst)
    return dst


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prior", required=True)
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--prior_large", required=True)
    parser.add_argument("--beta_vae", required=True)
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--scheduler", default="ddpm", choices=["ddpm", "ddim"])
    parser.add_argument("--clip_sample", default=None, choices=["true", "false"])
    parser.add_argument("--num_test_images", type=int, default=48)
    args = parser.parse_args()
    os.makedirs(PRETRAINED_DIR, exist_ok=True)

    unet = diffusers.UNet2DModel.from_pretrained(args.prior, subfolder="unet")
    config = diffusers.DDPMScheduler.load_config(args.prior, subfolder="scheduler")
    if args.clip_sample is not None:
        config["clip_sample"] = args.clip_sample == "true"
    scheduler_cls = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler}[args.scheduler]
    # the bundled encoder's prior is the bundled prior (not the training machine's folder)
    record = dict(ScoreVAEEncoder.load_config(args.encoder).get("prior") or {})
    record["name_or_path"] = "diffusers_scorevae.pretrained_path('fashion-mnist')"
    encoder = ScoreVAEEncoder.from_pretrained(args.encoder, prior=record)
    dst = os.path.join(PRETRAINED_DIR, "fashion-mnist")
    shutil.rmtree(dst, ignore_errors=True)
    ScoreVAEPipeline(unet=unet, scheduler=scheduler_cls.from_config(config), encoder=encoder).save_pretrained(dst)
    to_fp16(dst)
    copy_model(args.prior_large, "fashion-mnist-prior-large")
    copy_model(args.beta_vae, "fashion-mnist-beta-vae")
    copy_model(args.classifier, "fashion-mnist-classifier")

    images, labels = load_fashion_mnist("test")
    n = args.num_test_images
    np.savez_compressed(
        os.path.join(PRETRAINED_DIR, "fashion-mnist-test-images.npz"), images=images[:n], labels=labels[:n]
    )
    total = sum(
        os.path.getsize(p)
        for p in glob.glob(os.path.join(PRETRAINED_DIR, "**", "*"), recursive=True)
        if os.path.isfile(p)
    )
    print(f"bundle: {total / 1e6:.1f} MB in {PRETRAINED_DIR}")


if __name__ == "__main__":
    main()
