#!/usr/bin/env python
"""Fit the mean decoder of a ScoreVAE encoder: the network that turns a code z into an estimate of E[x_0 | z], from
which decodes at realism < 1 start (docs/math.md §9).

The encoder is frozen. Every training image is encoded once to its code (the encoder's mean at its clean level, the
code `pipe.encode` returns), and the decoder is fitted to map that code back to the image by least squares (½‖x̂ − x‖²
summed over pixels, in model space [-1, 1]): the minimiser is the conditional mean E[x_0 | z], the lowest-L2
reconstruction from the code. Starting from the decoder of the β-VAE the encoder was fitted to (`--init_decoder`)
makes this a short fine-tune.

    python examples/train_mean_decoder.py --pipeline fashion-mnist --init_decoder BETA_VAE_FOLDER \
        --output_dir runs/mean-decoder --max_train_steps 3000

It writes a complete `ScoreVAEPipeline` to `output_dir` (the encoder carrying its decoder, the input pipeline's UNet
and scheduler, and `--realism` as the encoder's saved default when given). The run can be killed at any moment: the
same command continues from `output_dir/checkpoint` (replaced atomically).
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
from diffusers_scorevae.loading import resolve
from diffusers_scorevae.models.beta_vae import BetaVAE
from diffusers_scorevae.pipelines import ScoreVAEPipeline


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Fit the mean decoder of a ScoreVAE encoder (encoder frozen).")
    parser.add_argument("--pipeline", type=str, default="fashion-mnist", help="Bundled name, folder or Hub id.")
    parser.add_argument("--fashion_mnist_dir", type=str, default=FASHION_MNIST_DIR)
    parser.add_argument("--dataset_name", type=str, default=None, help="e.g. zalando-datasets/fashion_mnist")
    parser.add_argument("--output_dir", type=str, default="scorevae-mean-decoder")
    parser.add_argument(
        "--init_decoder",
        type=str,
        default=None,
        help="A saved BetaVAE whose decoder starts the fit (best: the β-VAE the encoder was fitted to). Without it, "
        "the encoder's own decoder, else a new one of --decoder_block_out_channels.",
    )
    parser.add_argument("--decoder_block_out_channels", type=str, default="32,64,128,128")
    parser.add_argument("--realism", type=float, default=None, help="Save this as the encoder's default realism.")
    parser.add_argument("--train_batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--max_train_steps", type=int, default=3000)
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--logging_steps", type=int, default=100)
    parser.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N training images.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(input_args)


def save_checkpoint(output_dir, decoder, optimizer, step, wall_seconds, generator):
    """Write `checkpoint.tmp`, then swap it in: a kill at any moment leaves a complete checkpoint."""
    final, tmp = os.path.join(output_dir, "checkpoint"), os.path.join(output_dir, "checkpoint.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    tensors = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    for i, state in optimizer.state_dict()["state"].items():
        tensors.update({f"optimizer.{i}.{k}": v for k, v in state.items()})
    tensors["generator"] = generator.get_state()
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, os.path.join(tmp, "state.safetensors"))
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump({"step": step, "wall_seconds": wall_seconds}, f)
    if os.path.exists(final):
        os.rename(final, final + ".old")
    os.rename(tmp, final)
    shutil.rmtree(final + ".old", ignore_errors=True)


def load_checkpoint(output_dir, decoder, optimizer, generator):
    path = os.path.join(output_dir, "checkpoint")
    if not os.path.exists(os.path.join(path, "state.json")):
        return 0, 0.0
    tensors = load_file(os.path.join(path, "state.safetensors"))
    decoder.load_state_dict({k[len("decoder.") :]: v for k, v in tensors.items() if k.startswith("decoder.")})
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


def attach_decoder(encoder, args):
    """The encoder with the decoder the fit starts from (see `--init_decoder`)."""
    if args.init_decoder is not None:
        return encoder.with_decoder(BetaVAE.from_pretrained(resolve(args.init_decoder)).float())
    if encoder.has_decoder:
        return encoder
    widths = tuple(int(c) for c in args.decoder_block_out_channels.split(","))
    return encoder.with_config(decoder_block_out_channels=widths)


def main(args):
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    os.makedirs(args.output_dir, exist_ok=True)

    # 1. the pipeline; its encoder frozen, carrying the decoder being fitted
    pipe = ScoreVAEPipeline.from_pretrained(resolve(args.pipeline))
    if getattr(pipe, "vae", None) is not None:
        raise ValueError(f"--pipeline {args.pipeline} decodes through a vae; this script fits pixel-space decoders.")
    encoder = attach_decoder(pipe.encoder.float(), args).to(device)
    encoder.requires_grad_(False)
    decoder = encoder.decoder
    decoder.requires_grad_(True)

    # 2. the data, each image encoded once to its code
    if args.dataset_name is not None:
        images, _ = load_fashion_mnist_from_hub("train", dataset_name=args.dataset_name)
    else:
        images, _ = load_fashion_mnist("train", data_dir=args.fashion_mnist_dir)
    data = images_to_tensor(images[: args.max_train_samples]).to(device)
    with torch.no_grad():
        clean = encoder.config.clean_log_snr
        codes = torch.cat([encoder(batch, clean).mean for batch in data.split(1024)])
    print(f"{len(data)} images encoded once: codes {tuple(codes.shape)}")

    # 3. optimizer, resume
    optimizer = torch.optim.Adam(decoder.parameters(), lr=args.learning_rate)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    step, wall_seconds = load_checkpoint(args.output_dir, decoder, optimizer, generator)
    print(f"mean decoder: {sum(p.numel() for p in decoder.parameters()) / 1e6:.3f}M parameters, from step {step}")

    # 4. least squares on (code, image) pairs
    start, log, running = time.time(), os.path.join(args.output_dir, "train_log.jsonl"), []
    while step < args.max_train_steps:
        index = torch.randint(0, len(data), (args.train_batch_size,), generator=generator).to(device)
        loss = 0.5 * (decoder(codes[index]) - data[index]).pow(2).flatten(1).sum(dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        running.append(loss.item())
        elapsed = wall_seconds + time.time() - start
        if step % args.logging_steps == 0:
            mean_loss = sum(running) / len(running)
            with open(log, "a") as f:
                f.write(json.dumps({"step": step, "loss": mean_loss, "wall_seconds": elapsed}) + "\n")
            print(f"step {step}: loss {mean_loss:.3f}")
            running = []
        if step % args.checkpointing_steps == 0 or step >= args.max_train_steps:
            save_checkpoint(args.output_dir, decoder, optimizer, step, elapsed, generator)

    # 5. the pipeline with the fitted decoder (and the realism default, when given)
    if args.realism is not None:
        encoder.register_to_config(realism=args.realism)
    pipe.encoder = encoder.requires_grad_(False)
    pipe.save_pretrained(args.output_dir)
    print(f"saved the pipeline with its mean decoder to {args.output_dir}")


if __name__ == "__main__":
    main(parse_args())
