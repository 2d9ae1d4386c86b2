"""Image grids for world-model diagnostics: open-loop strips (truth / prediction / error) and
decoded imagined rollouts, as HWC uint8 arrays ready for MLflow or matplotlib."""
from __future__ import annotations

import numpy as np
import torch


def _to_numpy(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    if torch.is_tensor(frames):
        frames = frames.detach().cpu().numpy()
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8, got {frames.dtype}")
    return frames


def frame_grid(frames: torch.Tensor | np.ndarray, gap: int = 1) -> np.ndarray:
    """uint8 [R, T, C, H, W] -> one HWC uint8 image, R rows of T frames (C = 1 is shown as grey)."""
    frames = _to_numpy(frames)
    if frames.ndim != 5:
        raise ValueError(f"frame_grid expects [rows, time, C, H, W], got shape {frames.shape}")
    R, T, C, H, W = frames.shape
    if C == 1:
        frames = np.repeat(frames, 3, axis=2)
    elif C != 3:
        raise ValueError(f"frame_grid shows 1- or 3-channel frames, got {C} channels")
    out = np.full((R * (H + gap) - gap, T * (W + gap) - gap, 3), 255, np.uint8)
    for r in range(R):
        for t in range(T):
            y, x = r * (H + gap), t * (W + gap)
            out[y:y + H, x:x + W] = frames[r, t].transpose(1, 2, 0)
    return out


def error_frames(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Signed error mapped to uint8 around mid-grey: 128 where the prediction is exact."""
    diff = pred.astype(np.int16) - truth.astype(np.int16)
    return np.clip(128 + diff // 2, 0, 255).astype(np.uint8)


def openloop_strip(truth: torch.Tensor | np.ndarray, pred: torch.Tensor | np.ndarray, max_sequences: int = 4,
                   max_steps: int = 0) -> np.ndarray:
    """For each sequence, three rows (truth, prediction, error) of uint8 [N, T, C, H, W] frames,
    as one HWC uint8 image; ``max_steps`` > 0 keeps that many frames evenly spaced in time."""
    truth, pred = _to_numpy(truth), _to_numpy(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} must have the same shape")
    truth, pred = truth[:max_sequences], pred[:max_sequences]
    if max_steps and truth.shape[1] > max_steps:
        idx = np.linspace(0, truth.shape[1] - 1, max_steps).round().astype(int)
        truth, pred = truth[:, idx], pred[:, idx]
    rows = np.stack([truth, pred, error_frames(truth, pred)], 1).reshape(-1, *truth.shape[1:])
    return frame_grid(rows)
