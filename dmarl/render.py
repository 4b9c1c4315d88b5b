"""Record one episode of a trained policy as an animated GIF.

Frames come from the environment's own renderer in ``rgb_array`` mode: mpe2's pygame
renderer for MPE (no window: pygame draws to an off-screen surface) and MuJoCo's offscreen
renderer for MaMuJoCo. Headless MuJoCo needs an OpenGL backend without a display: EGL
(``MUJOCO_GL=egl``, the default set here when ``MUJOCO_GL`` is unset; works with a GPU or
Mesa's EGL) or OSMesa (``MUJOCO_GL=osmesa``, needs libOSMesa). The backend is read when
MuJoCo is first imported, so the variable must be set before that (``dmarl evaluate`` sets
it at start-up).

Copy 0 of a one-copy env runs with deterministic actions from the evaluation seed until its
first episode ends or ``max_frames`` frames are taken. Frames larger than ``max_side``
pixels are subsampled by an integer stride (MPE renders 700 x 700, MaMuJoCo 480 x 480).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dmarl.errors import UserError

if TYPE_CHECKING:
    from dmarl.policy import Policy

RENDERABLE_FAMILIES = ("mpe", "mamujoco")
VIDEO_SUFFIXES = (".gif",)


def prefer_headless_gl() -> None:
    """Select MuJoCo's EGL backend unless the user chose one (call before importing mujoco)."""
    os.environ.setdefault("MUJOCO_GL", "egl")


def check_video_path(path: str | Path) -> Path:
    """A writable ``.gif`` path, or one UserError (checked before any episode runs)."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"--video {path}: expected a file name ending in {', '.join(VIDEO_SUFFIXES)}")
    if not path.parent.resolve().is_dir():
        raise UserError(f"--video {path}: folder {path.parent} does not exist")
    return path


def _downscale(frame: np.ndarray, max_side: int) -> np.ndarray:
    stride = max(1, math.ceil(max(frame.shape[:2]) / max_side))
    return np.ascontiguousarray(frame[::stride, ::stride, :3])


def record_episode(
    policy: Policy,
    path: str | Path,
    *,
    task: str | None = None,
    task_kwargs: dict[str, Any] | None = None,
    seed: int = 1_000_000,
    max_frames: int = 300,
    fps: int = 20,
    max_side: int = 320,
) -> dict[str, Any]:
    """Run one episode of ``policy`` on ``task`` (default: its training task) and write the
    frames to the GIF ``path``; returns ``{"path", "frames", "episode_return", "shape"}``."""
    import imageio.v3 as iio

    path = check_video_path(path)
    if max_frames < 1 or fps < 1 or max_side < 16:
        raise UserError("video: max_frames and fps must be >= 1 and max_side >= 16")
    prefer_headless_gl()
    from dmarl import registry

    registry.load_all()
    name = task or policy.settings.task
    family = registry.get_task(name).family if name in registry.TASKS else None
    if family not in RENDERABLE_FAMILIES:
        raise UserError(f"task {name!r} (family {family}) cannot be rendered; video supports the "
                        f"{' and '.join(RENDERABLE_FAMILIES)} families")
    env = policy.make_env(1, task=task, task_kwargs=task_kwargs, render_mode="rgb_array")
    try:
        frames, episode_return = _rollout(policy, env, seed, max_frames, max_side)
    finally:
        env.close()
    iio.imwrite(path, np.stack(frames), extension=".gif", duration=int(round(1000 / fps)), loop=0)
    return {"path": str(path), "frames": len(frames), "episode_return": episode_return, "shape": frames[0].shape}


def _rollout(policy: Policy, env: Any, seed: int, max_frames: int, max_side: int) -> tuple[list[np.ndarray], float]:
    """Frames of copy 0's first episode (the state after reset, then after every step)."""
    obs, _ = env.reset(seed=seed)
    frames = [_downscale(_frame(env), max_side)]
    episode_return = math.nan
    while len(frames) < max_frames:
        obs, _, reward, _, _, info = env.step(policy.act(obs))
        if info["done"][0]:  # the env has reset copy 0; its last frame would show the new episode
            episode_return = float(info["episode_return"][0])
            break
        frames.append(_downscale(_frame(env), max_side))
    return frames, episode_return


def _frame(env: Any) -> np.ndarray:
    try:
        frame = env.render()
    except Exception as err:  # a missing GL backend surfaces here, from MuJoCo or pygame
        hint = " (set MUJOCO_GL=egl or MUJOCO_GL=osmesa before starting Python)" if "GL" in str(err) else ""
        raise UserError(f"rendering {env.spec.name} failed: {type(err).__name__}: {err}{hint}") from None
    if not isinstance(frame, np.ndarray) or frame.ndim != 3:
        raise UserError(f"rendering {env.spec.name} returned {type(frame).__name__}; expected an RGB array")
    return frame
