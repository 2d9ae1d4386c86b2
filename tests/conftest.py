"""Shared test set-up: one torch thread (the CI machine has two cores shared with other jobs),
headless MuJoCo, the `slow` marker, and small toy:reach demo directories."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: learning checks and long runs (deselect with -m 'not slow')")


def record_toy_demos(out: Path, episodes: int, keep_actions: bool, seed: int = 0, image_size: int = 0) -> Path:
    """Scripted-expert toy:reach demos with the env settings BC's presets resolve to (``image_size``
    overrides theirs when given)."""
    from imitation.bc import Config
    from vmil.config import resolve
    from vmil.demos import record

    env = resolve("bc", Config, "toy:reach", "smoke").env
    record("toy:reach", "scripted", episodes, out, keep_actions=keep_actions, image_size=image_size or env.image_size,
           action_repeat=env.action_repeat, seed=seed, quiet=True)
    return out


@pytest.fixture(scope="session")
def toy_demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five toy:reach episodes with actions."""
    return record_toy_demos(tmp_path_factory.mktemp("demos") / "toy_actions", 5, keep_actions=True)


@pytest.fixture(scope="session")
def toy_demos_obs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two observation-only toy:reach episodes."""
    return record_toy_demos(tmp_path_factory.mktemp("demos") / "toy_obs", 2, keep_actions=False)


@pytest.fixture
def record_demos():
    """The demo recorder above, for tests that need their own demos."""
    return record_toy_demos


@pytest.fixture(autouse=True)
def _restore_dense_backend():
    """A run sets the process's dense backend from its config ("auto" differs by CPU vendor); each
    test starts from the library's default, whatever the tests before it built."""
    from vmil.dense import dense_backend, set_dense_backend

    before = dense_backend()
    yield
    set_dense_backend(before)
