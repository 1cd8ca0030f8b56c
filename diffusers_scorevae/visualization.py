"""Image grids with labelled rows (original | ScoreVAE | β-VAE, interpolations, ...)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch


def make_rows(
    rows: list[torch.Tensor], labels: list[str] | None = None, scale: int = 2, padding: int = 2
) -> PIL.Image.Image:
    """A grid image: row i shows the images of `rows[i]` (`(N, C, H, W)` in [0, 1]) side by side, with an optional text
    label on its left. Images are enlarged `scale` times (nearest neighbour) so that small images stay visible."""
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"labels has {len(labels)} entries for {len(rows)} rows.")
    count = max(len(r) for r in rows)
    _, channels, height, width = rows[0].shape
    cell_h, cell_w = height * scale + padding, width * scale + padding
    label_w = 0 if labels is None else 8 + 7 * max(len(label) for label in labels)
    mode = "L" if channels == 1 else "RGB"
    grid = PIL.Image.new(mode, (label_w + count * cell_w + padding, len(rows) * cell_h + padding), color=255)
    draw = PIL.ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        if labels is not None:
            draw.text((4, i * cell_h + cell_h // 2 - 6), labels[i], fill=0)
        for j, image in enumerate(row):
            array = (image.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
            array = array[0] if channels == 1 else array.transpose(1, 2, 0)
            tile = PIL.Image.fromarray(array).resize((width * scale, height * scale), PIL.Image.NEAREST)
            grid.paste(tile, (label_w + padding + j * cell_w, padding + i * cell_h))
    return grid


def save_rows(rows: list[torch.Tensor], path: str, labels: list[str] | None = None, scale: int = 2):
    """Save `make_rows(rows, labels, scale)` to `path`."""
    make_rows(rows, labels, scale).save(path)
