#!/usr/bin/env bash
# The bundled flow-matching prior and the bundled DDPM-trained encoder decoding through it (docs/results.md,
# "Flow-matching priors"). CPU, 2 cores; run from the repository root. Every evaluation uses the first N test images
# with per-image seeds, so the rows of a table decode the same images from the same noise.
set -euo pipefail
FM=/usr/share/datasets/fashion-mnist
CLASSIFIER=diffusers_scorevae/pretrained/fashion-mnist-classifier
mkdir -p runs/flow-study
evaluate() {  # evaluate OUTPUT [scorevae evaluate arguments...]: the bundled encoder, split over two processes
    local output=$1
    shift
    torchrun --nproc_per_node 2 --master_addr 127.0.0.1 "$(command -v scorevae)" evaluate --fashion-mnist-dir "$FM" \
        --batch-size 250 --output "runs/flow-study/$output.json" "$@"
}

# 1. train: the SD3 recipe (σ uniform, target ε − x_0), initialised from the bundled DDPM prior's weights (same
#    architecture; the time embedding, input scale and output parameterisation are relearned), EMA, batch 128. The run
#    was started with --max_train_steps 2400, stopped at step 537 and continued with --max_train_steps 1500 (the cosine
#    schedule re-annealed to the shorter total) to fit the session.
python examples/train_prior.py --flow_matching --weighting_scheme none --output_dir runs/prior-flow \
    --init_unet diffusers_scorevae/pretrained/fashion-mnist --max_train_steps 1500 --lr_scheduler cosine \
    --lr_warmup_steps 100 --learning_rate 5e-4 --train_batch_size 128 --use_ema --checkpointing_steps 200 --seed 0

# 2. the samplers and shifts screened (the same weights; only the scheduler and its sigmas change), then the bundle
for shift in 1 3; do
    python scripts/bundle_flow_prior.py --prior runs/prior-flow --shift "$shift" --output_dir "runs/flow-study/shift$shift"
done
python scripts/bundle_flow_prior.py --prior runs/prior-flow --shift 3 --scheduler euler_ancestral \
    --output_dir runs/flow-study/shift3-anc
python scripts/bundle_flow_prior.py --prior runs/prior-flow --shift 3 --scheduler euler_ancestral  # -> pretrained/

# 3. prior samples: Fréchet distance of 1,000 samples (the flow prior with the Euler ODE and with its saved Euler
#    ancestral sampler, 50 steps; the DDPM prior with DDPM 50, no clipping)
python examples/evaluate_prior.py --pipeline diffusers_scorevae/pretrained/fashion-mnist-prior-flow \
    --classifier "$CLASSIFIER" --num_samples 1000 --batch_size 250 --num_inference_steps 50 --scheduler flow_euler \
    --output_dir runs/flow-study/samples-flow
python examples/evaluate_prior.py --pipeline diffusers_scorevae/pretrained/fashion-mnist-prior-flow \
    --classifier "$CLASSIFIER" --num_samples 1000 --batch_size 250 --num_inference_steps 50 \
    --output_dir runs/flow-study/samples-flow-anc
python examples/evaluate_prior.py --pipeline diffusers_scorevae/pretrained/fashion-mnist --classifier "$CLASSIFIER" \
    --num_samples 1000 --batch_size 250 --num_inference_steps 50 --no-clip_sample \
    --output_dir runs/flow-study/samples-ddpm

# 4. the screen on the first 500 test images, at the saved defaults and at realism 1, beside the DDPM bundle
for realism in 0.1 1; do
    evaluate "ddpm-r$realism-500" --num-images 500 --realism "$realism"
    for prior in shift1 shift3 shift3-anc; do
        evaluate "flow-$prior-r$realism-500" --num-images 500 --realism "$realism" --prior "runs/flow-study/$prior"
    done
done

# 5. steps at realism 1: the bundle (Euler ancestral) and the Euler ODE, shift 3
for steps in 10 20; do
    evaluate "flow-anc-steps$steps-r1-500" --num-images 500 --realism 1 --num-inference-steps "$steps" \
        --prior fashion-mnist-prior-flow
    evaluate "flow-euler-steps$steps-r1-500" --num-images 500 --realism 1 --num-inference-steps "$steps" \
        --prior runs/flow-study/shift3
done

# 6. the full test set at the saved defaults; realism 1 on the first 1,000 (the DDPM rows: docs/studies/realism_study.sh)
evaluate flow-default-10000 --num-images 10000 --prior fashion-mnist-prior-flow
evaluate flow-r1-1000 --num-images 1000 --realism 1 --prior fashion-mnist-prior-flow

# 7. decode cost against the flow prior's own unconditional Euler sampling
python benchmarks/bench_decode.py --pipeline fashion-mnist --prior fashion-mnist-prior-flow --batch_size 64 --repeats 3
python benchmarks/bench_decode.py --pipeline fashion-mnist --prior fashion-mnist-prior-flow --batch_size 64 --repeats 3 \
    --realism 1

# 8. the inversion round trip at the defaults (50 steps) and at 100, first 32 test images
python - <<'EOF'
import torch
from diffusers_scorevae import ScoreVAEPipeline, load_fashion_mnist, metrics, pretrained_path
pipe = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist"))
flow = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist-prior-flow"), encoder=pipe.encoder)
x = torch.from_numpy(load_fashion_mnist("test")[0][:32]).float().div(255).unsqueeze(1)
for name, p in (("ddpm", pipe), ("flow", flow)):
    p.set_progress_bar_config(disable=True)
    for steps in (None, 100):
        inv = p.invert(x, num_inference_steps=steps)
        psnr = metrics.psnr(p(latent_codes=inv.latent_codes, latents=inv.latents, output_type="pt").images, x)
        print(name, inv.num_inference_steps, "steps: PSNR mean", psnr.mean().item(), "min", psnr.min().item())
EOF
