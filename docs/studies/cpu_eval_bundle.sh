#!/usr/bin/env bash
# The CPU measurements of the bundled model reported in the README (2 cores, about 65 minutes with the defaults).
# Images from the start of the Fashion-MNIST test set; results under runs/eval/. The full-test-set numbers and the
# 10-250-step sweep come from the GPU run (docs/studies/gpu_continue_bundle.sh); N=256 adds `scorevae evaluate` here.
set -eu
N=${N:-0}
NS=${NS:-96}
SWEEP=${SWEEP:-"ddpm:1000:4 ddpm:250:0.5 ddpm:250:1 ddpm:250:2 ddpm:250:4"}
SWAP=${SWAP-"ddpm:250:4 ddpm:250:2 ddpm:250:1"}
mkdir -p runs/eval
stamp() { echo "[$(date +%H:%M:%S)] $*"; }
if [ "$N" -gt 0 ]; then
  stamp "defaults (DDPM 250, guidance 4) vs beta-VAE, $N images"
  scorevae evaluate --num-images $N --output runs/eval/defaults.json
fi
if [ -n "$SWAP" ]; then
  stamp "prior swap, $NS images"
  python examples/evaluate_scorevae.py --pipelines diffusers_scorevae/pretrained/fashion-mnist \
    --prior diffusers_scorevae/pretrained/fashion-mnist-prior-large \
    --classifier diffusers_scorevae/pretrained/fashion-mnist-classifier --num_images $NS --batch_size $NS \
    --settings $SWAP --output runs/eval/swap.json
fi
stamp "steps and guidance sweeps, $NS images"
python examples/evaluate_scorevae.py --pipelines diffusers_scorevae/pretrained/fashion-mnist \
  --classifier diffusers_scorevae/pretrained/fashion-mnist-classifier --num_images $NS --batch_size $NS \
  --settings $SWEEP --output runs/eval/sweep.json
stamp "bits/dim, $NS images, 100 sampled timesteps"
scorevae evaluate --bits-per-dim --num-images $NS --num-sampled-timesteps 100 --batch-size $NS --output runs/eval/bpd.json
stamp "bits/dim, 48 images, all 1000 timesteps"
scorevae evaluate --bits-per-dim --num-images 48 --batch-size 48 --output runs/eval/bpd_all.json
stamp "inversion PSNR vs steps, 16 images"
python - <<'PY' | tee runs/eval/inversion.md
import torch
from diffusers import DDIMScheduler
from diffusers_scorevae import ScoreVAEPipeline, pretrained_path
from diffusers_scorevae.bundled import bundled_test_images
from diffusers_scorevae.metrics import psnr

pipe = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist"))
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
pipe.set_progress_bar_config(disable=True)
images = torch.from_numpy(bundled_test_images()[0][:16]).float()[:, None] / 255.0
print("| DDIM steps | PSNR, inverted x_T (dB) | PSNR, random x_T (dB) |\n|---|---|---|")
for steps in (25, 50, 100, 250):
    inv = pipe.invert(images, num_inference_steps=steps)
    exact = pipe(latent_codes=inv.latent_codes, latents=inv.latents, num_inference_steps=steps, output_type="pt").images
    fresh = pipe(latent_codes=inv.latent_codes, num_inference_steps=steps, generator=torch.manual_seed(0), output_type="pt").images
    print(f"| {steps} | {psnr(images, exact).mean():.2f} | {psnr(images, fresh).mean():.2f} |", flush=True)
PY
stamp "inversion done"
