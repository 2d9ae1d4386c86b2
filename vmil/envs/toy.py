"""A synthetic pixel task drawn with numpy: move a point to a goal in a 2-d arena.

``toy:reach`` takes 2-d velocity actions in [-1, 1]; ``toy:reach_discrete`` takes one of 5 actions
(none, up, down, left, right). Start and goal are drawn at random each episode; the point stops at
the walls. The image shows the goal as a blue disc and the point as a yellow disc on a dark
background (the two stay distinct in grayscale). The hidden reward per physics step is
``1 - min(distance / 0.5, 1)``, so an expert that reaches the goal quickly and stays gets close to
one per step; ``info["success"]`` says whether the point's centre lies inside the goal disc.

The task is meant to be solvable by every imitation method from pixels in minutes on a CPU.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from vmil.base import EnvSpec, TimeStep
from vmil.envs import EpisodeGuard, check_continuous_action, check_discrete_action, empty_obs, timestep

SPEED = 0.08  # arena units per physics step at full action (arena is the unit square)
AGENT_RADIUS = 0.08
GOAL_RADIUS = 0.12
MIN_START_DISTANCE = 0.3
REWARD_SCALE = 0.5
EPISODE_PHYSICS_STEPS = 50
BACKGROUND = (15, 15, 15)
AGENT_COLOUR = (250, 200, 50)
GOAL_COLOUR = (50, 110, 240)
# none, up, down, left, right (image rows grow downwards, like the arena's y)
DISCRETE_MOVES = np.array([[0, 0], [0, -1], [0, 1], [-1, 0], [1, 0]], dtype=np.float64)

TASKS = ("reach", "reach_discrete")


def tasks() -> list[str]:
    return list(TASKS)


def _luma(colour: tuple[int, int, int]) -> int:
    return int(round(colour[0] * 0.299 + colour[1] * 0.587 + colour[2] * 0.114))


class Canvas:
    """Draws filled discs into a reused CHW uint8 frame; touches only each disc's bounding box."""

    def __init__(self, size: int, grayscale: bool):
        self.size = size
        self.grayscale = grayscale
        channels = 1 if grayscale else 3
        self.centres = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.background = self._colour(BACKGROUND)
        self.frame = np.empty((channels, size, size), dtype=np.uint8)

    def _colour(self, rgb: tuple[int, int, int]) -> np.ndarray:
        values = [_luma(rgb)] if self.grayscale else list(rgb)
        return np.array(values, dtype=np.uint8)[:, None]

    def clear(self) -> None:
        self.frame[:] = self.background[:, :, None]

    def disc(self, x: float, y: float, radius: float, rgb: tuple[int, int, int]) -> None:
        s = self.size
        r0, r1 = max(int((y - radius) * s), 0), min(int(math.ceil((y + radius) * s)) + 1, s)
        c0, c1 = max(int((x - radius) * s), 0), min(int(math.ceil((x + radius) * s)) + 1, s)
        dy = self.centres[r0:r1, None] - y
        dx = self.centres[None, c0:c1] - x
        mask = dy * dy + dx * dx <= radius * radius
        patch = self.frame[:, r0:r1, c0:c1]
        patch[:, mask] = self._colour(rgb)

    def draw(self, agent: np.ndarray, goal: np.ndarray) -> np.ndarray:
        self.clear()
        self.disc(goal[0], goal[1], GOAL_RADIUS, GOAL_COLOUR)
        self.disc(agent[0], agent[1], AGENT_RADIUS, AGENT_COLOUR)
        return self.frame.copy()


class ToyReach:
    """Reach a goal in the unit square. Positions are (x, y) with y pointing down the image."""

    def __init__(self, *, discrete: bool, image_size: int, action_repeat: int, seed: int,
                 grayscale: bool, max_episode_steps: int, render: bool, proprio: bool):
        name = "reach_discrete" if discrete else "reach"
        steps = max_episode_steps or math.ceil(EPISODE_PHYSICS_STEPS / action_repeat)
        self.discrete = discrete
        self.action_repeat = action_repeat
        self.render_enabled = render
        self.proprio = proprio
        self.spec = EnvSpec(
            env_id=f"toy:{name}", obs_shape=(1 if grayscale else 3, image_size, image_size),
            action_dim=len(DISCRETE_MOVES) if discrete else 2, discrete=discrete,
            state_dim=2 if proprio else 0, action_repeat=action_repeat, max_episode_steps=steps,
            camera=None, extra={"family": "toy", "task": name, "render": render, "expert_obs_dim": 4,
                                "grayscale": grayscale})
        self.canvas = Canvas(image_size, grayscale)
        self.rng = np.random.default_rng(seed)
        self.guard = EpisodeGuard(self.spec.env_id, steps)
        self.agent = np.zeros(2)
        self.goal = np.zeros(2)

    # -- dynamics ------------------------------------------------------------------------------

    def distance(self) -> float:
        return float(np.linalg.norm(self.agent - self.goal))

    def _reward(self) -> float:
        return 1.0 - min(self.distance() / REWARD_SCALE, 1.0)

    def _velocity(self, action: Any) -> np.ndarray:
        if self.discrete:
            return DISCRETE_MOVES[check_discrete_action(action, self.spec)]
        return check_continuous_action(action, self.spec)

    def _observe(self, reward: float, first: bool, last: bool) -> TimeStep:
        obs = self.canvas.draw(self.agent, self.goal) if self.render_enabled else empty_obs()
        state = self.agent.astype(np.float32) if self.proprio else None
        info = {"success": self.distance() <= GOAL_RADIUS, "distance": self.distance()}
        return timestep(obs, state, reward, first, False, last, info)

    def reset(self) -> TimeStep:
        lo_a, lo_g = AGENT_RADIUS, GOAL_RADIUS
        while True:  # rejection keeps a minimum start distance, so no episode starts solved
            self.agent = self.rng.uniform(lo_a, 1 - lo_a, size=2)
            self.goal = self.rng.uniform(lo_g, 1 - lo_g, size=2)
            if self.distance() >= MIN_START_DISTANCE:
                break
        self.guard.reset()
        return self._observe(0.0, True, False)

    def step(self, action: np.ndarray | int) -> TimeStep:
        self.guard.before_step()
        velocity = self._velocity(action)
        reward = 0.0
        for _ in range(self.action_repeat):
            self.agent = np.clip(self.agent + SPEED * velocity, AGENT_RADIUS, 1 - AGENT_RADIUS)
            reward += self._reward()
        last = self.guard.after_step(terminal=False)
        return self._observe(reward, False, last)

    def expert_observation(self) -> np.ndarray:
        """[x, y, goal_x, goal_y], float32."""
        return np.concatenate([self.agent, self.goal]).astype(np.float32)

    def render_frame(self) -> np.ndarray:
        """The current image (CHW uint8), also when the env runs with ``render=False``."""
        return self.canvas.draw(self.agent, self.goal)

    def close(self) -> None:
        pass


def make(task: str, *, image_size: int = 64, action_repeat: int = 1, seed: int = 0,
         camera: str | int | None = None, fast_render: bool = True, grayscale: bool = False,
         max_episode_steps: int = 0, render: bool = True, proprio: bool = False) -> ToyReach:
    """``proprio=True`` adds the point's position as ``TimeStep.state``. ``fast_render`` has no
    effect (numpy drawing is already cheap)."""
    if task not in TASKS:
        raise ValueError(f"unknown toy task '{task}' (valid: {', '.join('toy:' + t for t in TASKS)})")
    if camera not in (None, ""):
        raise ValueError(f"toy:{task} has one fixed view; leave camera empty (got {camera!r})")
    return ToyReach(discrete=task == "reach_discrete", image_size=image_size, action_repeat=action_repeat,
                    seed=seed, grayscale=grayscale, max_episode_steps=max_episode_steps, render=render,
                    proprio=proprio)

