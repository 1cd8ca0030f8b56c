"""The realism screen of docs/results.md ("The realism knob"): decodes of the bundled pipeline started from a mean
decoder refined over a fraction s of the schedule, for several s, on a slice of the test set (per-image seeds = the
image's index), beside the bundled β-VAE. A setting is `scheduler:steps:s[:eta]`.

    python docs/studies/realism_probe.py --num_images 250 --first 0 --decoder runs/teacher_b016 \
        --decoder_checkpoint runs/mean-decoder/checkpoint/state.safetensors \
        --settings ddpm:50:0 ddpm:50:0.04 ddpm:50:0.06 ddpm:50:0.1 ddpm:50:0.12 ddpm:50:0.14 --out screen_a.json
"""

import argparse
import json
import time

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffusers_scorevae import (
    BetaVAE,
    FashionMNISTClassifier,
    ScoreVAEPipeline,
    load_fashion_mnist,
    metrics,
    pretrained_path,
)
from diffusers_scorevae.data import images_to_tensor

p = argparse.ArgumentParser()
p.add_argument("--num_images", type=int, default=200)
p.add_argument("--first", type=int, default=0)
p.add_argument("--decoder", default="runs/teacher_b016")
p.add_argument(
    "--settings", nargs="+", default=["ddpm:50:0", "ddpm:50:0.06", "ddpm:50:0.1", "ddpm:50:0.2", "ddpm:50:1"]
)
p.add_argument("--guidance", type=float, default=3.5)
p.add_argument("--batch_size", type=int, default=200)
p.add_argument("--out", default="runs/realism_probe.json")
p.add_argument("--decoder_checkpoint", default=None)
args = p.parse_args()
torch.manual_seed(0)
images, labels = load_fashion_mnist("test")
x = (images_to_tensor(images[args.first : args.first + args.num_images]) + 1) / 2
y = torch.as_tensor(labels[args.first : args.first + args.num_images])
pipe = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist"))
pipe.set_progress_bar_config(disable=True)
dec = BetaVAE.from_pretrained(args.decoder)
# s is the strength itself here: s0 = 0 (the bundle saves its own s0)
pipe.encoder = pipe.encoder.float().with_decoder(
    dec.float(), guidance_scale=args.guidance, guidance_log_snr_range=(-6.0, None), strength_at_realism_zero=None
)
pipe.unet.float()
if args.decoder_checkpoint:
    from safetensors.torch import load_file

    t = load_file(args.decoder_checkpoint)
    pipe.encoder.decoder.load_state_dict({k[len("decoder.") :]: v for k, v in t.items() if k.startswith("decoder.")})
clf = FashionMNISTClassifier.from_pretrained(pretrained_path("fashion-mnist-classifier")).eval()
bvae = BetaVAE.from_pretrained(pretrained_path("fashion-mnist-beta-vae")).eval()
feats_orig = metrics.classifier_features(clf, x)


def report(name, rec, seconds=None, evals=None):
    r = {
        "l2": metrics.l2(rec, x).mean().item(),
        "psnr": metrics.psnr(rec, x).mean().item(),
        "ssim": metrics.ssim(rec, x).mean().item(),
        "sharpness": metrics.sharpness(rec).mean().item(),
        "class_kept": metrics.class_kept(clf, None, rec, labels=y),
        "fd": metrics.frechet_distance(feats_orig, metrics.classifier_features(clf, rec)),
        "seconds": seconds,
        "unet_evals": evals,
    }
    print(name, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    return r


results = {}
with torch.no_grad():
    out = bvae(x * 2 - 1, sample_posterior=False).sample
    results["beta_vae"] = report("beta_vae", (out / 2 + 0.5).clamp(0, 1))
codes = pipe.encode(x)
for setting in args.settings:
    sched, steps, realism, *rest = setting.split(":")
    eta = float(rest[0]) if rest else 0.0
    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}[sched]
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    recs = []
    t0 = time.process_time()
    for s in range(0, len(x), args.batch_size):
        gens = [torch.Generator().manual_seed(args.first + s + i) for i in range(len(codes[s : s + args.batch_size]))]
        kw = {"eta": eta} if sched == "ddim" else {}
        recs.append(
            pipe(
                latent_codes=codes[s : s + args.batch_size],
                num_inference_steps=int(steps),
                realism=float(realism),
                generator=gens,
                output_type="pt",
                **kw,
            ).images
        )
    seconds = time.process_time() - t0
    results[setting] = report(setting, torch.cat(recs), seconds, int(int(steps) * float(realism)))
json.dump(results, open(args.out, "w"), indent=1)
