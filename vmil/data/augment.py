"""Image augmentation run batched on the training device."""
from __future__ import annotations

import torch


def random_shift(images: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ-v2 random shift: replicate-pad by ``pad`` pixels, then crop back at a random integer offset.

    ``images`` is uint8 or float ``[B, C, H, W]``; the result is float32 in the input's value range
    (no rescaling). Each sample draws its own shift, shared by all its channels, so a frame stack
    moves as one. Replicate padding followed by a crop equals reading the source at clamped
    coordinates, so the crop is one gather of precomputed indices; gathering uint8 before the
    float conversion moves a quarter of the bytes that DrQ-v2's pad + grid_sample does.
    """
    if images.ndim != 4:
        raise ValueError(f"random_shift expects [B, C, H, W] images, got shape {tuple(images.shape)}")
    if pad < 0:
        raise ValueError(f"random_shift pad must be >= 0, got {pad}")
    b, c, h, w = images.shape
    if pad == 0 or b == 0:
        return images.float()
    shift = torch.randint(-pad, pad + 1, (b, 2), generator=generator, device=images.device)
    rows = torch.clamp(torch.arange(h, device=images.device) + shift[:, :1], 0, h - 1)  # [B, H]
    cols = torch.clamp(torch.arange(w, device=images.device) + shift[:, 1:], 0, w - 1)  # [B, W]
    flat = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    out = torch.gather(images.reshape(b, c, h * w), 2, flat)
    return out.reshape(b, c, h, w).float()
