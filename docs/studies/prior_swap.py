#!/usr/bin/env python
"""The prior swap at the saved settings (docs/results.md, "Settings saved with the model"): the bundled pipeline's
defaults against `ScoreVAEPipeline.from_pretrained(<large prior>, encoder=pipe.encoder)` with defaults, on the first
N test images with per-image seeds.

    python docs/studies/prior_swap.py --num_images 500 [--realism 1]
"""

import argparse

import torch

from diffusers_scorevae import ScoreVAEPipeline, load_fashion_mnist, metrics, pretrained_path
from diffusers_scorevae.evaluation import image_generators

parser = argparse.ArgumentParser()
parser.add_argument("--num_images", type=int, default=500)
parser.add_argument("--batch_size", type=int, default=250)
parser.add_argument("--realism", type=float, default=None)
args = parser.parse_args()
images, _ = load_fashion_mnist("test")
x = torch.from_numpy(images[: args.num_images]).float().div(255).unsqueeze(1)
pipe = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist"))
swapped = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist-prior-large"), encoder=pipe.encoder)
for name, p in [("bundled", pipe), ("large prior", swapped)]:
    p.set_progress_bar_config(disable=True)
    out = []
    for start in range(0, len(x), args.batch_size):
        batch = x[start : start + args.batch_size]
        generators = image_generators(0, range(start, start + len(batch)))
        out.append(p(image=batch, generator=generators, realism=args.realism, output_type="pt").images)
    out = torch.cat(out)
    print(name, type(p.scheduler).__name__, "clip_sample in config:", p.scheduler.config.get("clip_sample"),
          "L2", round(metrics.l2(out, x).mean().item(), 4), flush=True)  # fmt: skip
