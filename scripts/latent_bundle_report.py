"""Print (and write as JSON) the numbers the latent bundle reports next to the pixel bundle, from the files of
scripts/train_latent_bundle.sh: `scorevae evaluate`'s metrics (ScoreVAE on the cropped 28x28 decodes, the pixel
beta-VAE, the autoencoder's own reconstruction = the floor), the autoencoder's test L2 from its training, the decode
time per image, and the training time of each stage (wall seconds the script measured, summed over resumed runs).

    python scripts/latent_bundle_report.py --work_dir runs/latent --evaluation runs/latent/evaluate.json
"""

import argparse
import json
import os

STAGES = ("autoencoder", "prior", "beta_vae", "encoder")
COLUMNS = ("kl", "l2", "psnr", "ssim", "sharpness", "class_kept", "fd")


def main(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--evaluation", required=True, help="The JSON of `scorevae evaluate --output`.")
    parser.add_argument("--output", default=None, help="Write the report here (default: WORK_DIR/report.json).")
    args = parser.parse_args(input_args)

    with open(args.evaluation) as f:
        evaluation = json.load(f)
    seconds = {}
    for stage in STAGES:
        path = os.path.join(args.work_dir, f"{stage}.seconds")
        seconds[stage] = float(open(path).read().split()[0]) if os.path.isfile(path) else None
    with open(os.path.join(args.work_dir, "autoencoder", "metrics.json")) as f:
        autoencoder = json.load(f)
    report = {
        "num_images": evaluation["num_images"],
        "decoding": f"{evaluation['scheduler']} {evaluation['num_inference_steps']} steps, "
        f"guidance {evaluation['guidance_scale']}",
        "scorevae": evaluation["scorevae"],
        "beta_vae_pixel": evaluation["beta_vae"],
        "autoencoder_floor": evaluation.get("autoencoder"),
        "originals_sharpness": evaluation["originals"]["sharpness"],
        "autoencoder_scaling_factor": autoencoder["scaling_factor"],
        "autoencoder_test_l2_at_training": autoencoder["test_reconstruction_l2"],
        "decode_seconds_per_image": evaluation["scorevae_seconds"] / evaluation["num_images"],
        "training_seconds": seconds,
        "training_minutes_total": sum(s for s in seconds.values() if s is not None) / 60,
    }
    output = args.output or os.path.join(args.work_dir, "report.json")
    with open(output, "w") as f:
        json.dump(report, f, indent=2)

    print(f"fashion-mnist-latent, {report['num_images']} test images, {report['decoding']}")
    print("| | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    rows = (("ScoreVAE (latent)", report["scorevae"]), ("beta-VAE (pixel)", report["beta_vae_pixel"]),
            ("autoencoder (floor)", report["autoencoder_floor"] or {}))
    for name, row in rows:
        print(f"| {name} | " + " | ".join(f"{row[k]:.3f}" if k in row else "" for k in COLUMNS) + " |")
    print(f"originals' sharpness {report['originals_sharpness']:.3f}; autoencoder scaling_factor "
          f"{report['autoencoder_scaling_factor']:.4f}")
    print(f"decode time {report['decode_seconds_per_image']:.3f} s/image; training "
          + ", ".join(f"{k} {v / 60:.1f} min" if v is not None else f"{k} ?" for k, v in seconds.items())
          + f" (total {report['training_minutes_total']:.1f} min)")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
