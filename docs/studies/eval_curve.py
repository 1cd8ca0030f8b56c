"""Learning curve of an encoder run: reconstruction L2 of saved encoders (one folder per step) on the first N test
images, next to the KL and losses logged at that step. Prints a markdown table.

`--encoders` holds `step-N` encoder folders, or the training script's `checkpoint-N` folders (their `encoder_ema/`
is used when present, else `encoder/`).

    python docs/studies/eval_curve.py --prior runs/gpu/prior --encoders runs/encoder-curve \
        --log runs/encoder-fmnist/train_log.jsonl
"""

import argparse
import glob
import json
import os

import diffusers
import torch

from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline
from diffusers_scorevae.data import load_fashion_mnist
from diffusers_scorevae.evaluation import reconstruction_metrics, scorevae_reconstruct

parser = argparse.ArgumentParser()
parser.add_argument("--prior", required=True)
parser.add_argument("--encoders", required=True, help="Folder of step-N encoder folders.")
parser.add_argument("--log", required=True)
parser.add_argument("--num_images", type=int, default=64)
parser.add_argument("--num_inference_steps", type=int, default=100)
parser.add_argument("--guidance_scale", type=float, default=4.0)
parser.add_argument("--every", type=int, default=1000)
parser.add_argument(
    "--step_offset", type=int, default=0, help="Add to the folder's step (a run started from another)."
)
parser.add_argument("--fashion_mnist_dir", default=None)
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
parser.add_argument("--output", default=None, help="Also write the rows as JSON.")
args = parser.parse_args()

logs = {}
if os.path.isfile(args.log):
    for line in open(args.log):
        entry = json.loads(line)
        logs[entry["step"]] = entry
images, _ = (
    load_fashion_mnist("test", data_dir=args.fashion_mnist_dir)
    if args.fashion_mnist_dir
    else load_fashion_mnist("test")
)
originals = torch.from_numpy(images[: args.num_images]).float()[:, None] / 255.0
unet = diffusers.UNet2DModel.from_pretrained(args.prior, subfolder="unet")
scheduler = diffusers.DDPMScheduler.from_pretrained(args.prior, subfolder="scheduler")
print(
    f"| step | KL (nats) | score loss | prior loss | L2 (ddpm:{args.num_inference_steps}, γ={args.guidance_scale}) |"
)
print("|---|---|---|---|---|")
folders = (
    glob.glob(os.path.join(args.encoders, "step-*"))
    + glob.glob(os.path.join(args.encoders, "checkpoint-*[0-9]"))
)
folders = sorted(folders, key=lambda p: int(p.rsplit("-", 1)[1]))
rows = []
for folder in folders:
    step = int(folder.rsplit("-", 1)[1])
    if step % args.every and folder != folders[-1]:
        continue
    encoder_folder = folder
    for sub in ("encoder_ema", "encoder"):
        if os.path.isdir(os.path.join(folder, sub)):
            encoder_folder = os.path.join(folder, sub)
            break
    encoder = ScoreVAEEncoder.from_pretrained(encoder_folder)
    pipe = ScoreVAEPipeline(unet=unet, scheduler=scheduler, encoder=encoder).to(args.device)
    reconstructions = scorevae_reconstruct(
        pipe, originals, len(originals), args.num_inference_steps, args.guidance_scale, progress=False
    )
    l2 = reconstruction_metrics(originals, reconstructions)["l2"]
    near = logs.get(step) or (logs[max(s for s in logs if s <= step)] if any(s <= step for s in logs) else {})
    kl, score, prior = (near.get(k, float("nan")) for k in ("kl", "score_loss", "prior_loss"))
    print(f"| {step + args.step_offset} | {kl:.1f} | {score:.1f} | {prior:.1f} | {l2:.3f} |", flush=True)
    rows.append({"step": step + args.step_offset, "kl": kl, "score_loss": score, "prior_loss": prior, "l2": l2})
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"num_images": len(originals), "num_inference_steps": args.num_inference_steps,
                       "guidance_scale": args.guidance_scale, "rows": rows}, f, indent=1)
