#!/usr/bin/env python
"""Seconds per ScoreVAE encoder training step divided by seconds per training step of the UNet itself (forward +
backward + optimizer, same batch), measured side by side in one run. Target: <= 0.5.

    python benchmarks/bench_train_step.py --model cifar10 --batch_size 16
    python benchmarks/bench_train_step.py --model bundled --batch_size 64

`cifar10` is the google/ddpm-cifar10-32 UNet architecture (35.7M parameters, random weights) with the default
`ScoreVAEEncoder(32, 3, 384)`; `bundled` is the bundled Fashion-MNIST prior with its encoder.
"""

import argparse
import statistics
import time

import torch
from bench_decode import cifar10_unet  # the benchmarks' folder is on sys.path when run as a script
from diffusers import DDPMScheduler

from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline, pretrained_path, scorevae_loss


def build(model: str):
    if model == "cifar10":
        unet = cifar10_unet()
        return unet, DDPMScheduler(), ScoreVAEEncoder(32, 3, 384)
    pipe = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist"))
    return pipe.unet, DDPMScheduler.from_config(pipe.scheduler.config), pipe.encoder


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["cifar10", "bundled"], default="cifar10")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    unet, scheduler, encoder = build(args.model)
    unet.to(device).train()
    encoder.to(device).train()
    channels, size = unet.config.in_channels, unet.config.sample_size
    images = torch.rand(args.batch_size, channels, size, size, device=device) * 2 - 1
    unet_optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    encoder_optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)

    def unet_step():
        # a diffusers training step of the prior: noise prediction loss, backward, optimizer
        unet.requires_grad_(True)
        noise = torch.randn(images.shape, generator=generator, device=device)
        t = torch.randint(0, 1000, (len(images),), generator=generator, device=device)
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(images, noise, t), t).sample, noise)
        loss.backward()
        unet_optimizer.step()
        unet_optimizer.zero_grad(set_to_none=True)

    def encoder_step():
        # the ScoreVAE step: frozen UNet forward (no grad) + the encoder's double backward + optimizer
        unet.requires_grad_(False)
        loss = scorevae_loss(encoder, unet, scheduler, images, generator=generator).loss
        loss.backward()
        encoder_optimizer.step()
        encoder_optimizer.zero_grad(set_to_none=True)

    def timed(step):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for step in (unet_step, encoder_step):  # warm-up
        step()
    times = {"unet": [], "encoder": []}
    for _ in range(args.repeats):  # alternate, so that load changes hit both alike
        times["unet"].append(timed(unet_step))
        times["encoder"].append(timed(encoder_step))
    unet_s, encoder_s = statistics.median(times["unet"]), statistics.median(times["encoder"])
    print(f"device {device}, model {args.model}, batch {args.batch_size}, {args.repeats} repeats (median)")
    print(f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M params: {unet_s:.3f} s / training step")
    print(f"encoder {sum(p.numel() for p in encoder.parameters()) / 1e6:.2f}M params: {encoder_s:.3f} s / step")
    print(f"ratio encoder step / UNet step: {encoder_s / unet_s:.3f}   (target <= 0.5)")


if __name__ == "__main__":
    main()
