"""Offscreen frames of a raw MuJoCo model (``mujoco.Renderer``), shared by the sawyer and baoding families.

The cost of a small frame is the shadow map and multisampling, not the geometry (DESIGN.md); both
live in ``model.vis.quality`` and are read when the GL context is created, so they are set here
before the first render and never after. Fast rendering also switches off planar reflections
(a second pass over the scene wherever a material has ``reflectance > 0``).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

MAX_IMAGE_SIZE = 1024


def import_mujoco() -> Any:
    # EGL must be chosen before mujoco is first imported (it reads MUJOCO_GL once).
    os.environ.setdefault("MUJOCO_GL", "egl")
    import mujoco

    return mujoco


def check_image_size(env_id: str, image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
            or not 8 <= int(image_size) <= MAX_IMAGE_SIZE:
        raise ValueError(f"{env_id}: image_size must be an integer in [8, {MAX_IMAGE_SIZE}] "
                         f"(64 for world models, 84 for DrQ-v2/PatchAIL), got {image_size!r}")
    return int(image_size)


class FrameRenderer:
    """Renders ``data`` from one fixed camera to an ``[H, W, 3]`` uint8 frame, top row first.

    ``rotate180`` turns the frame upright for cameras whose up axis points down (Meta-World's
    ``corner*`` cameras); it is a view-only fix, the camera pose is untouched.
    """

    def __init__(self, model: Any, size: int, camera: int, *, fast: bool, rotate180: bool = False):
        mujoco = import_mujoco()
        if fast:
            model.vis.quality.shadowsize = 0
            model.vis.quality.offsamples = 0
        # The offscreen buffer must hold the frame; Meta-World's is 640x480, the hand's 640x480.
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), size)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), size)
        self._renderer = mujoco.Renderer(model, height=size, width=size)
        if fast:
            # Reflective materials (Meta-World's table, the hand scene's floor) cost a second pass of
            # the scene: about half the CPU of a fast 64x64 frame. The flag survives update_scene().
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._camera = camera
        self._rotate = rotate180

    def render(self, data: Any) -> np.ndarray:
        self._renderer.update_scene(data, camera=self._camera)
        frame = self._renderer.render()
        if self._rotate:
            frame = frame[::-1, ::-1]
        return np.ascontiguousarray(frame)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def camera_name(env_id: str, camera: str | int | None, default: str, allowed: tuple[str, ...]) -> str:
    """The camera's name for a name, an index into ``allowed`` (int or digit string) or None (default).

    Checked before any model is built, so a typo fails at once."""
    if camera is None or camera == "":
        return default
    if isinstance(camera, str) and camera.lstrip("-").isdigit():
        camera = int(camera)
    if isinstance(camera, (int, np.integer)) and not isinstance(camera, bool):
        index = int(camera)
        if not 0 <= index < len(allowed):
            raise ValueError(f"{env_id}: camera index {index} is out of range; use 0..{len(allowed) - 1} "
                             f"or a name: {', '.join(allowed)}")
        return allowed[index]
    if not isinstance(camera, str) or camera not in allowed:
        raise ValueError(f"{env_id}: unknown camera {camera!r}; valid cameras: {', '.join(allowed)} "
                         f"(default {default})")
    return camera


def camera_id(model: Any, name: str) -> int:
    mujoco = import_mujoco()
    cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
    if cam_id < 0:  # the packaged model changed: an installation problem, not a user error
        raise RuntimeError(f"the model has no camera named {name!r}; reinstall the robotics extra")
    return cam_id
