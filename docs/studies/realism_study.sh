#!/usr/bin/env bash
# The realism knob of the bundled pixel pipeline (docs/results.md, "The realism knob"): the mean decoder, the screen
# that chose s0 and the default, the shipped settings, and the evaluations. CPU, one thread per process; run from the
# repository root with Debian's dataset-fashion-mnist installed.
set -euo pipefail
export OMP_NUM_THREADS=1
DATA=/usr/share/datasets/fashion-mnist

# 1. the teacher the bundled encoder was fitted to (the beta 0.016 beta-VAE of commit 00b82f9)
mkdir -p runs/teacher_b016
for f in config.json diffusion_pytorch_model.safetensors; do
    git show "00b82f9:diffusers_scorevae/pretrained/fashion-mnist-beta-vae/$f" > "runs/teacher_b016/$f"
done

# 2. its decoder, fitted 3,000 steps by least squares to the bundled encoder's codes (35 min of one shared core)
python examples/train_mean_decoder.py --pipeline fashion-mnist --init_decoder runs/teacher_b016 \
    --fashion_mnist_dir $DATA --output_dir runs/mean-decoder --max_train_steps 3000

# 3. the screen (test images 0-499 in two halves; strengths s = 0, 0.04, ..., 0.14 of DDPM 50): the bundle before
#    step 4, its encoder carrying runs/mean-decoder's decoder
#    (the numbers in docs/results.md were taken with a one-off probe that decoded `pipe(..., realism=s)` with s0 = 0)

# 4. ship: s0 = 0.04 (the lowest L2 of the screen), default realism 0.1 (6 of 50 steps)
python scripts/save_decode_settings.py diffusers_scorevae/pretrained/fashion-mnist --mean-decoder runs/mean-decoder \
    --realism 0.1 --strength-at-realism-zero 0.04

# 5. the evaluations: 1,000 test images at five realism values and the default, then the full test set
EV="torchrun --nproc_per_node 2 --master_addr 127.0.0.1 $(command -v scorevae) evaluate --fashion-mnist-dir $DATA \
    --batch-size 250"
for r in 0 0.1 0.25 0.5 0.75 1; do
    $EV --num-images 1000 --realism $r --output runs/realism/r$r.json
done
for r in 0.1 0; do
    $EV --num-images 10000 --realism $r --output runs/realism/full_r$r.json
done
python docs/studies/plot_realism.py runs/realism/r0.json runs/realism/r0.1.json runs/realism/r0.25.json \
    runs/realism/r0.5.json runs/realism/r0.75.json runs/realism/r1.json --output docs/realism.png

# 6. decode cost next to the same UNet's unconditional DDPM 50 (batch 64, 3 repeats, idle machine)
for r in 0.1 0; do
    python benchmarks/bench_decode.py --pipeline fashion-mnist --batch_size 64 --repeats 3 --realism $r
done
