#!/usr/bin/env python
"""The distortion–realism curve of docs/results.md ("The realism knob"): L2 against FD for `scorevae evaluate` runs
at several `--realism` values over the same images and seeds, with the β-VAE's point (needs matplotlib).

    python docs/studies/plot_realism.py runs/realism/r*.json --output docs/realism.png
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="JSON files written by `scorevae evaluate --output`.")
    parser.add_argument("--output", default="docs/realism.png")
    args = parser.parse_args(argv)
    runs = []
    for path in args.runs:
        with open(path) as f:
            runs.append(json.load(f))
    runs.sort(key=lambda run: run["realism"])
    counts = {run["num_images"] for run in runs}
    if len(counts) != 1:
        raise ValueError(f"the runs cover different numbers of images: {sorted(counts)}")

    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    fd = [run["scorevae"]["fd"] for run in runs]
    l2 = [run["scorevae"]["l2"] for run in runs]
    ax.plot(fd, l2, "o-", color="tab:blue", label="ScoreVAE, realism 0 … 1")
    for run, x, y in zip(runs, fd, l2):
        ax.annotate(f"{run['realism']:g}", (x, y), textcoords="offset points", xytext=(6, -10), fontsize=8)
    baseline = runs[0]["beta_vae"]
    ax.plot([baseline["fd"]], [baseline["l2"]], "s", color="tab:red", label="β-VAE, same rate")
    ax.set_xlabel("FD of classifier features (realism; lower is better)")
    ax.set_ylabel("L2 to the original (distortion; lower is better)")
    ax.set_title(f"Fashion-MNIST, first {counts.pop():,} test images, same codes and seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
