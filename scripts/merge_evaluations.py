#!/usr/bin/env python
"""Join `examples/evaluate_scorevae.py --save_decodes` runs over consecutive slices of the Fashion-MNIST test set
(`--first_image`, e.g. one run per CPU core) into the results of one run over the whole range: every metric is
recomputed on all the images (the Fréchet distance too, which is not a mean over images), the rate `kl` and
`model_evals` are averaged over images, `seconds` are summed. The β-VAE (deterministic) is evaluated again on the
whole range.

    python examples/evaluate_scorevae.py ... --first_image 0 --num_images 5000 --save_decodes --output a.json
    python examples/evaluate_scorevae.py ... --first_image 5000 --num_images 5000 --save_decodes --output b.json
    python scripts/merge_evaluations.py a.json b.json --output full.json

The runs must agree on everything but the slice (pipelines, settings, seed, classifier, β-VAE, guidance range, K),
and each slice but the last must be a multiple of `--batch_size` long: then the noise seeds are those of one run.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

from diffusers_scorevae.data import load_fashion_mnist
from diffusers_scorevae.evaluation import beta_vae_metrics, decode_metrics, reconstruction_metrics

SHARED = (
    "num_samples_per_code",
    "guidance_log_snr_range",
    "seed",
    "batch_size",
    "fashion_mnist_dir",
    "beta_vae_path",
    "classifier",
    "prior",
)


def load_parts(paths):
    parts = []
    for path in paths:
        with open(path) as f:
            part = json.load(f)
        if "seed" not in part:
            raise ValueError(f"{path} was written by an older evaluate_scorevae.py (no `seed`); rerun it.")
        part["_path"] = path
        part["_folder"] = os.path.dirname(os.path.abspath(path))  # decodes are saved next to the JSON
        parts.append(part)
    parts.sort(key=lambda part: part["first_image"])
    first = parts[0]
    for part in parts[1:]:
        path = part["_path"]
        for key in SHARED:
            if part[key] != first[key]:
                raise ValueError(f"The runs differ in `{key}`: {first[key]!r} and {part[key]!r} ({path}).")
        if part.get("scorevae", {}).keys() != first.get("scorevae", {}).keys() or any(
            part["scorevae"][p].keys() != first["scorevae"][p].keys() for p in first.get("scorevae", {})
        ):
            raise ValueError(f"The runs evaluate different pipelines or settings ({path}).")
    for before, after in zip(parts, parts[1:]):
        end = before["first_image"] + before["num_images"]
        if after["first_image"] != end:
            raise ValueError(
                f"The slices are not consecutive: one ends at image {end}, the next starts at {after['first_image']}."
            )
        if before["num_images"] % first["batch_size"]:
            raise ValueError(
                f"A slice of {before['num_images']} images (from {before['first_image']}) is not a multiple of the "
                f"batch size {first['batch_size']}: the next slice's noise seeds are not those of one run."
            )
    return parts


def merge(paths, device="cpu"):
    from diffusers_scorevae.models.beta_vae import BetaVAE
    from diffusers_scorevae.models.classifier import FashionMNISTClassifier

    parts = load_parts(paths)
    first = parts[0]
    count = sum(part["num_images"] for part in parts)
    images, _ = load_fashion_mnist("test", data_dir=first["fashion_mnist_dir"])
    start = first["first_image"]
    originals = torch.from_numpy(images[start : start + count]).float()[:, None] / 255.0
    classifier = None
    if first["classifier"]:
        classifier = FashionMNISTClassifier.from_pretrained(first["classifier"]).to(device).eval()
    fd = classifier is not None
    results = {key: first[key] for key in SHARED}
    results.update(
        num_images=count,
        first_image=start,
        merged_from=[os.path.abspath(path) for path in paths],
        originals={"sharpness": reconstruction_metrics(originals, originals)["sharpness"]},
    )
    if "beta_vae" in first:
        model = BetaVAE.from_pretrained(first["beta_vae_path"]).to(device).eval()
        results["beta_vae"] = beta_vae_metrics(model, originals, classifier, fd)[1]
    weights = [part["num_images"] / count for part in parts]
    for pipeline, settings in first.get("scorevae", {}).items():
        for setting in settings:
            entries = [part["scorevae"][pipeline][setting] for part in parts]
            missing = [entry for entry in entries if "decodes" not in entry]
            if missing:
                raise ValueError(f"{pipeline} {setting}: a run has no saved decodes (run it with --save_decodes).")
            arrays = [np.load(os.path.join(part["_folder"], e["decodes"])) for part, e in zip(parts, entries)]
            decodes = torch.from_numpy(np.concatenate(arrays, axis=1))
            entry = decode_metrics(originals, decodes, classifier, fd)
            entry["kl"] = sum(w * e["kl"] for w, e in zip(weights, entries))
            entry["seconds"] = sum(e["seconds"] for e in entries)
            entry["model_evals"] = sum(w * e["model_evals"] for w, e in zip(weights, entries))
            entry["clip_sample"] = entries[0]["clip_sample"]
            results.setdefault("scorevae", {}).setdefault(pipeline, {})[setting] = entry
    return results


def main(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="The JSON files of the runs (any order).")
    parser.add_argument("--output", required=True, help="JSON file to write.")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(input_args)
    results = merge(args.runs, args.device)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
