"""Contact sheets: a labelled grid of generated images, so a person sees a comparison at a glance."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def contact_sheet(rows: Sequence[tuple[str, Sequence[np.ndarray | None]]], columns: Sequence[str],
                  scale: int = 4) -> Image.Image:
    """`rows` = (label, one H x W x C uint8 image per column, None for a gap); images upscaled by `scale`."""
    first = next(image for _, images in rows for image in images if image is not None)
    h, w = first.shape[:2]
    cell_h, cell_w = h * scale + 4, w * scale + 4
    label_width = 8 + 6 * max(len(label) for label, _ in rows)
    header = 16
    sheet = Image.new("RGB", (label_width + cell_w * len(columns), header + cell_h * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for col, name in enumerate(columns):
        draw.text((label_width + col * cell_w + 2, 2), str(name), fill="black")
    for row, (label, images) in enumerate(rows):
        y = header + row * cell_h
        draw.text((4, y + cell_h // 2 - 6), label, fill="black")
        for col, image in enumerate(images):
            if image is not None:
                pixels = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
                tile = Image.fromarray(pixels).convert("RGB").resize((w * scale, h * scale), Image.NEAREST)
                sheet.paste(tile, (label_width + col * cell_w + 2, y + 2))
    return sheet
