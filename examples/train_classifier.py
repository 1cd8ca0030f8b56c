#!/usr/bin/env python
"""Train the Fashion-MNIST classifier that evaluates samples and reconstructions (class kept, Fréchet distance).

    python examples/train_classifier.py --output_dir runs/classifier

Writes a `FashionMNISTClassifier` folder (`config.json`, safetensors weights) and `metrics.json` with the test
accuracy.
"""

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F

from diffusers_scorevae.data import FASHION_MNIST_DIR, load_fashion_mnist, load_fashion_mnist_from_hub
from diffusers_scorevae.models.classifier import FashionMNISTClassifier


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Train a small Fashion-MNIST classifier for evaluation.")
    parser.add_argument(
        "--fashion_mnist_dir",
        type=str,
        default=FASHION_MNIST_DIR,
        help="Folder with the Fashion-MNIST idx files (Debian's `dataset-fashion-mnist`).",
    )
    parser.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help="A Hub dataset (e.g. `zalando-datasets/fashion_mnist`) to use instead of `--fashion_mnist_dir`.",
    )
    parser.add_argument("--cache_dir", type=str, default=None, help="Cache folder for `--dataset_name`.")
    parser.add_argument("--output_dir", type=str, default="fashion-mnist-classifier")
    parser.add_argument("--num_epochs", type=int, default=5)
    parser.add_argument(
        "--max_train_steps", type=int, default=None, help="Total training steps; overrides `--num_epochs`."
    )
    parser.add_argument("--train_batch_size", type=int, default=128)
    parser.add_argument("--eval_batch_size", type=int, default=1000)
    parser.add_argument("--learning_rate", type=float, default=3e-3, help="Peak learning rate (one-cycle schedule).")
    parser.add_argument("--adam_weight_decay", type=float, default=1e-4)
    parser.add_argument(
        "--random_flip", action=argparse.BooleanOptionalAction, default=True, help="Random horizontal flips."
    )
    parser.add_argument("--max_shift", type=int, default=2, help="Random shifts of up to this many pixels; 0: none.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logging_steps", type=int, default=100)
    args = parser.parse_args(input_args)
    if args.max_shift < 0:
        raise ValueError(f"`--max_shift` must be >= 0, got {args.max_shift}.")
    return args


def load_split(args, split):
    """Images in [0, 1] of shape (N, 1, 28, 28) and int64 labels of shape (N,)."""
    if args.dataset_name is not None:
        images, labels = load_fashion_mnist_from_hub(split, args.dataset_name, cache_dir=args.cache_dir)
    else:
        images, labels = load_fashion_mnist(split, args.fashion_mnist_dir)
    return torch.from_numpy(images).unsqueeze(1).float().div(255), torch.from_numpy(labels)


def augment(images, random_flip, max_shift, generator):
    """Random horizontal flips and integer shifts (zero fill) of up to `max_shift` pixels, per image."""
    batch_size, channels, height, width = images.shape
    if random_flip:
        flip = torch.rand(batch_size, device=images.device, generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if max_shift > 0:
        padded = F.pad(images, (max_shift,) * 4)
        shifts = torch.randint(0, 2 * max_shift + 1, (2, batch_size), device=images.device, generator=generator)
        rows = (shifts[0, :, None] + torch.arange(height, device=images.device))[:, None, :, None]
        cols = (shifts[1, :, None] + torch.arange(width, device=images.device))[:, None, None, :]
        batch_index = torch.arange(batch_size, device=images.device)[:, None, None, None]
        channel_index = torch.arange(channels, device=images.device)[None, :, None, None]
        images = padded[batch_index, channel_index, rows, cols]
    return images


@torch.no_grad()
def accuracy(model, images, labels, batch_size):
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size])
        correct += (logits.argmax(dim=1) == labels[start : start + batch_size]).sum().item()
    return correct / len(images)


def main(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    generator = torch.Generator(device).manual_seed(args.seed)

    # 1. data, held on the training device
    train_images, train_labels = (t.to(device) for t in load_split(args, "train"))
    test_images, test_labels = (t.to(device) for t in load_split(args, "test"))
    steps_per_epoch = len(train_images) // args.train_batch_size
    max_train_steps = args.max_train_steps or args.num_epochs * steps_per_epoch

    # 2. model, optimizer, one-cycle learning rate
    model = FashionMNISTClassifier().to(device)
    print(f"FashionMNISTClassifier: {sum(p.numel() for p in model.parameters()):,} parameters, device {device}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.learning_rate, total_steps=max_train_steps)

    # 3. train
    start_time = time.time()
    step, running_loss = 0, 0.0
    for epoch in range(math.ceil(max_train_steps / steps_per_epoch)):
        model.train()
        permutation = torch.randperm(len(train_images), device=device, generator=generator)
        for batch_index in range(steps_per_epoch):
            if step >= max_train_steps:
                break
            indices = permutation[batch_index * args.train_batch_size : (batch_index + 1) * args.train_batch_size]
            images = augment(train_images[indices], args.random_flip, args.max_shift, generator)
            loss = F.cross_entropy(model(images), train_labels[indices])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_scheduler.step()
            step += 1
            running_loss += loss.item()
            if step % args.logging_steps == 0:
                print(
                    f"epoch {epoch} step {step}/{max_train_steps} loss {running_loss / args.logging_steps:.4f} "
                    f"({time.time() - start_time:.0f} s)"
                )
                running_loss = 0.0

    # 4. evaluate and save
    test_accuracy = accuracy(model, test_images, test_labels, args.eval_batch_size)
    train_seconds = time.time() - start_time
    print(f"test accuracy {test_accuracy:.4f} after {step} steps ({train_seconds:.0f} s)")
    model.save_pretrained(args.output_dir)
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        metrics = {"test_accuracy": test_accuracy, "steps": step, "train_seconds": round(train_seconds, 1)}
        json.dump(metrics, f, indent=2)
    return test_accuracy


if __name__ == "__main__":
    main(parse_args())
