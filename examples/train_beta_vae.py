#!/usr/bin/env python
"""Train the β-VAE baseline on Fashion-MNIST: the ScoreVAE encoder architecture plus a convolutional decoder, the same
latent size and the same β convention (sums over pixels and latent dims; Gaussian likelihood of unit variance in
model space [-1, 1]).

    python examples/train_beta_vae.py --output_dir runs/beta-vae --latent_dim 32 --beta 0.01

With `--vae` (a saved `AutoencoderKL` / `VQModel`, e.g. from `train_autoencoder_kl.py`) the β-VAE models that
autoencoder's latents instead of pixels (the teacher of a latent ScoreVAE encoder, `train_scorevae_encoder.py
--objective posterior --teacher`): the images are padded centrally with black to the autoencoder's `sample_size`
(never resized), encoded once by the pipeline's rule (`diffusers_scorevae.autoencoders.vae_encode`) and cached; the
likelihood is the unit-variance Gaussian on those (scaled, ~unit-variance) latents. The autoencoder is copied to
`output_dir/vae` so that the β-VAE's pixel reconstructions can be decoded.

    python examples/train_beta_vae.py --vae runs/autoencoder-kl --output_dir runs/latent-beta-vae \
        --block_out_channels 64,128,128 --beta 0.01

The run can be killed at any moment; the same command continues from `output_dir/checkpoint` (replaced atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import torch
from safetensors.torch import load_file, save_file

from diffusers_scorevae.data import (
    FASHION_MNIST_DIR,
    images_to_tensor,
    load_fashion_mnist,
    load_fashion_mnist_from_hub,
)
from diffusers_scorevae.models.beta_vae import BetaVAE


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Train a β-VAE baseline on Fashion-MNIST.")
    parser.add_argument("--fashion_mnist_dir", type=str, default=FASHION_MNIST_DIR)
    parser.add_argument("--dataset_name", type=str, default=None, help="e.g. zalando-datasets/fashion_mnist")
    parser.add_argument("--output_dir", type=str, default="beta-vae-fashion-mnist")
    parser.add_argument("--latent_dim", type=int, default=32)
    parser.add_argument("--block_out_channels", type=str, default="32,64,128,128")
    parser.add_argument("--beta", type=float, default=0.01)
    parser.add_argument(
        "--init_model",
        type=str,
        default=None,
        help="Start from this saved BetaVAE (folder), e.g. to retune β: its architecture replaces --latent_dim and "
        "--block_out_channels. A checkpoint in --output_dir still takes precedence (resume).",
    )
    parser.add_argument("--train_batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--max_train_steps", type=int, default=20000)
    parser.add_argument("--max_train_minutes", type=float, default=None)
    parser.add_argument("--checkpointing_steps", type=int, default=1000)
    parser.add_argument("--logging_steps", type=int, default=100)
    parser.add_argument("--random_flip", action="store_true")
    parser.add_argument(
        "--vae",
        type=str,
        default=None,
        help="A saved AutoencoderKL or VQModel: model its latents of the images (padded with black to its "
        "sample_size).",
    )
    parser.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N training images.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(input_args)
    if args.vae is not None and args.random_flip:
        raise ValueError(
            "--random_flip cannot be combined with --vae: the latents are encoded once, and a flipped latent is not "
            "the latent of the flipped image."
        )
    return args


def save_checkpoint(output_dir, model, optimizer, step, wall_seconds, generator):
    """Write `checkpoint.tmp`, then swap it in: a kill at any moment leaves a complete checkpoint."""
    final, tmp = os.path.join(output_dir, "checkpoint"), os.path.join(output_dir, "checkpoint.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model.save_pretrained(os.path.join(tmp, "model"))
    tensors = {f"optimizer.{i}.{k}": v for i, s in optimizer.state_dict()["state"].items() for k, v in s.items()}
    tensors["generator"] = generator.get_state()
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, os.path.join(tmp, "optimizer.safetensors"))
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump({"step": step, "wall_seconds": wall_seconds}, f)
    if os.path.exists(final):
        os.rename(final, final + ".old")
    os.rename(tmp, final)
    shutil.rmtree(final + ".old", ignore_errors=True)
    model.save_pretrained(output_dir)


def load_checkpoint(output_dir, model, optimizer, generator):
    path = os.path.join(output_dir, "checkpoint")
    if not os.path.exists(os.path.join(path, "state.json")):
        return 0, 0.0
    model.load_state_dict(BetaVAE.from_pretrained(os.path.join(path, "model")).state_dict())
    tensors = load_file(os.path.join(path, "optimizer.safetensors"))
    state = optimizer.state_dict()
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(state)
    generator.set_state(tensors["generator"])
    with open(os.path.join(path, "state.json")) as f:
        state = json.load(f)
    return state["step"], state["wall_seconds"]


def main(args):
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    os.makedirs(args.output_dir, exist_ok=True)
    if args.dataset_name is not None:
        images, _ = load_fashion_mnist_from_hub("train", dataset_name=args.dataset_name)
    else:
        images, _ = load_fashion_mnist("train", data_dir=args.fashion_mnist_dir)
    images = images[: args.max_train_samples]
    if args.vae is not None:  # latents of the padded images, encoded once
        from diffusers_scorevae.autoencoders import encode_to_latents, load_autoencoder
        from diffusers_scorevae.data import pad_images

        vae = load_autoencoder(args.vae).to(device)
        data = encode_to_latents(vae, images_to_tensor(pad_images(images, vae.config.sample_size))).to(device)
        print(f"{len(images)} images padded to {vae.config.sample_size}x{vae.config.sample_size} and encoded once: "
              f"latents {tuple(data.shape[1:])}, std {data.std().item():.3f}")
        if not os.path.isfile(os.path.join(args.output_dir, "vae", "config.json")):
            vae.save_pretrained(os.path.join(args.output_dir, "vae.tmp"))
            shutil.rmtree(os.path.join(args.output_dir, "vae"), ignore_errors=True)
            os.rename(os.path.join(args.output_dir, "vae.tmp"), os.path.join(args.output_dir, "vae"))
    else:
        data = images_to_tensor(images).to(device)

    if args.init_model is not None:
        model = BetaVAE.from_pretrained(args.init_model).float().to(device)
        expected = (data.shape[1], data.shape[-1])
        got = (model.config.in_channels, model.config.sample_size)
        if got != expected:
            raise ValueError(
                f"--init_model {args.init_model} models (in_channels, sample_size) = {got}, but the training data is "
                f"{expected}; pass a BetaVAE trained on this data."
            )
    else:
        model = BetaVAE(
            sample_size=data.shape[-1],
            in_channels=data.shape[1],
            latent_dim=args.latent_dim,
            block_out_channels=tuple(int(c) for c in args.block_out_channels.split(",")),
        ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    step, wall_seconds = load_checkpoint(args.output_dir, model, optimizer, generator)
    print(f"β-VAE: {sum(p.numel() for p in model.parameters()) / 1e6:.3f}M parameters, starting at step {step}")

    start, log = time.time(), os.path.join(args.output_dir, "train_log.jsonl")
    running = []
    while step < args.max_train_steps:
        index = torch.randint(0, len(data), (args.train_batch_size,), generator=generator).to(device)
        batch = data[index]
        if args.random_flip:
            flip = (torch.rand(len(batch), generator=generator) < 0.5).to(device)
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        sample_generator = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + step)
        loss, reconstruction, kl = model.loss(batch, beta=args.beta, generator=sample_generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        running.append((loss.item(), reconstruction.item(), kl.item()))
        elapsed = wall_seconds + time.time() - start
        if step % args.logging_steps == 0:
            mean = [sum(v) / len(v) for v in zip(*running)]
            with open(log, "a") as f:
                f.write(json.dumps({"step": step, "loss": mean[0], "reconstruction": mean[1], "kl": mean[2],
                                    "wall_seconds": elapsed}) + "\n")
            print(f"step {step}: loss {mean[0]:.3f} recon {mean[1]:.3f} kl {mean[2]:.2f}")
            running = []
        out_of_time = args.max_train_minutes is not None and time.time() - start > 60 * args.max_train_minutes
        if step % args.checkpointing_steps == 0 or step >= args.max_train_steps or out_of_time:
            save_checkpoint(args.output_dir, model, optimizer, step, elapsed, generator)
        if out_of_time:
            break


if __name__ == "__main__":
    main(parse_args())
