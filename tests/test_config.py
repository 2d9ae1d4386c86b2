"""Config system: presets, layering, overrides, checks, and every algorithm's presets."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from vmil.config import (ConfigError, RunConfig, configs_root, describe, from_dict, load_yaml, parse_override,
                         presets, resolve, save_yaml, to_dict)
from vmil.registry import ALGOS, UnknownAlgorithm, algo_module


def _importable_algos() -> list[str]:
    """Registry entries whose module exists. A module that exists but fails to import is a failure
    (it is kept here and its test fails), not a skip."""
    names = []
    for name, module in ALGOS.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name == module:
                continue
        except Exception:  # noqa: BLE001 - surfaced by the parametrized test below
            pass
        names.append(name)
    return names


def test_size_presets_exist():
    assert presets() == ["cpu", "paper", "smoke"]


def test_override_parsing():
    assert parse_override("model.deter=200") == {"model": {"deter": 200}}
    assert parse_override("agent.lr=3e-4") == {"agent": {"lr": "3e-4"}}  # YAML 1.1; the config takes it
    assert parse_override("train.video=false") == {"train": {"video": False}}
    assert parse_override("agent.channels=[8, 16]") == {"agent": {"channels": [8, 16]}}
    assert parse_override("env.camera=") == {"env": {"camera": ""}}
    assert parse_override("env.id=dmc:cheetah_run") == {"env": {"id": "dmc:cheetah_run"}}
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.env_steps")


def test_unknown_key_names_the_nearest():
    from imitation.bc import Config

    with pytest.raises(ConfigError, match=r"unknown config key 'train.env_step'; did you mean train.env_steps"):
        resolve("bc", Config, "toy:reach", "smoke", ["train.env_step=5"])
    with pytest.raises(ConfigError, match=r"agent.batch_sise'; did you mean agent.batch_size"):
        resolve("bc", Config, "toy:reach", "smoke", ["agent.batch_sise=5"])


def test_wrong_types_fail():
    from imitation.bc import Config

    with pytest.raises(ConfigError, match=r"train.env_steps: expected an integer, got 'abc'"):
        resolve("bc", Config, "toy:reach", "smoke", ["train.env_steps=abc"])
    with pytest.raises(ConfigError, match=r"train.video: expected true/false"):
        resolve("bc", Config, "toy:reach", "smoke", ["train.video=3"])
    with pytest.raises(ConfigError, match=r"agent.loss: 'msee' is not one of \['mse', 'nll'\].*did you mean mse"):
        resolve("bc", Config, "toy:reach", "smoke", ["agent.loss=msee"])
    with pytest.raises(ConfigError, match="unknown preset 'smok'; did you mean smoke"):
        resolve("bc", Config, "toy:reach", "smok")


def test_layering_order():
    """size preset < algo defaults < algo preset < command line."""
    from imitation.bc import Config

    size = yaml.safe_load((configs_root() / "size" / "cpu.yaml").read_text())
    algo = yaml.safe_load((configs_root() / "algo" / "bc.yaml").read_text())
    cfg = resolve("bc", Config, "toy:reach", "cpu")
    assert cfg.train.prefill_steps == size["train"]["prefill_steps"]  # from the size preset
    assert cfg.train.offline_updates == algo["presets"]["cpu"]["train"]["offline_updates"]  # algo preset wins
    assert cfg.agent.frame_stack == algo["defaults"]["agent"]["frame_stack"]
    assert cfg.agent.batch_size == algo["presets"]["cpu"]["agent"]["batch_size"]
    cfg = resolve("bc", Config, "toy:reach", "cpu", ["train.offline_updates=7", "agent.channels=[4, 4]", "seed=3",
                                                    "agent.lr=1e-4", "train.env_steps=1e5"])
    assert (cfg.train.offline_updates, cfg.agent.channels, cfg.seed) == (7, (4, 4), 3)
    assert (cfg.agent.lr, cfg.train.env_steps) == (1e-4, 100_000)
    assert cfg.algo == "bc" and cfg.env.id == "toy:reach"


def _config_tree(tmp_path, monkeypatch):
    """An empty configs/ tree (size, algo, env) that resolve() reads instead of the package's."""
    root = tmp_path / "configs"
    for sub in ("size", "algo", "env"):
        (root / sub).mkdir(parents=True)
    monkeypatch.setattr("vmil.config.configs_root", lambda: root)
    return root


def test_env_layer_applies_by_family(tmp_path, monkeypatch):
    """configs/env/<family>.yaml sits between the algo preset and the command line."""
    from imitation.bc import Config

    root = _config_tree(tmp_path, monkeypatch)
    (root / "size" / "cpu.yaml").write_text("train: {env_steps: 10}\nenv: {image_size: 64}\n")
    (root / "algo" / "bc.yaml").write_text("defaults: {env: {image_size: 72}}\npresets: {cpu: {agent: {lr: 0.5}}}\n")
    (root / "env" / "toy.yaml").write_text("defaults: {env: {image_size: 80}}\npresets: {cpu: {env: {action_repeat: 4}}}\n")
    cfg = resolve("bc", Config, "toy:reach", "cpu")
    assert (cfg.train.env_steps, cfg.env.image_size, cfg.env.action_repeat, cfg.agent.lr) == (10, 80, 4, 0.5)
    assert resolve("bc", Config, "toy:reach", "cpu", ["env.image_size=32"]).env.image_size == 32
    (root / "env" / "toy.yaml").write_text("env: {image_size: 80}\n")
    with pytest.raises(ConfigError, match="top-level keys must be 'defaults' and 'presets'"):
        resolve("bc", Config, "toy:reach", "cpu")


def test_algo_settings_for_one_env_family(tmp_path, monkeypatch):
    """An algo file's env_families.<family> lands above the env layer, only on that family, and a
    family name that does not exist is named with the nearest one."""
    from imitation.bc import Config

    root = _config_tree(tmp_path, monkeypatch)
    (root / "size" / "cpu.yaml").write_text("train: {env_steps: 10}\n")
    (root / "env" / "toy.yaml").write_text("defaults: {env: {image_size: 80}}\n")
    (root / "env" / "dmc.yaml").write_text("defaults: {env: {image_size: 80}}\n")
    (root / "algo" / "bc.yaml").write_text(
        "presets: {cpu: {agent: {lr: 0.5}}}\n"
        "env_families: {dmc: {defaults: {env: {image_size: 48}}, presets: {cpu: {agent: {lr: 0.25}}}}}\n")
    toy, dmc = resolve("bc", Config, "toy:reach", "cpu"), resolve("bc", Config, "dmc:cartpole_swingup", "cpu")
    assert (toy.env.image_size, toy.agent.lr) == (80, 0.5)
    assert (dmc.env.image_size, dmc.agent.lr) == (48, 0.25)
    assert resolve("bc", Config, "dmc:cartpole_swingup", "cpu", ["agent.lr=0.1"]).agent.lr == 0.1
    (root / "algo" / "bc.yaml").write_text("env_families: {dcm: {defaults: {agent: {lr: 0.25}}}}\n")
    with pytest.raises(ConfigError, match="env_families.dcm is not an env family; did you mean dmc"):
        resolve("bc", Config, "toy:reach", "cpu")
    (root / "algo" / "bc.yaml").write_text("env_families: {dmc: {agent: {lr: 0.25}}}\n")
    with pytest.raises(ConfigError, match="env_families.dmc keys must be 'defaults' and 'presets'"):
        resolve("bc", Config, "toy:reach", "cpu")


def test_saved_config_round_trips(tmp_path):
    from imitation.bc import Config

    cfg = resolve("bc", Config, "toy:reach", "smoke", ["agent.channels=[8, 16, 32]", "env.camera=2"])
    save_yaml(cfg, tmp_path / "config.yaml")
    assert load_yaml(tmp_path / "config.yaml", Config) == cfg
    assert from_dict(RunConfig, to_dict(cfg), agent_cls=Config) == cfg


def test_every_field_is_documented():
    rows = describe(RunConfig)
    assert {"train.env_steps", "env.image_size", "replay.capacity", "seed"} <= {r[0] for r in rows}
    for name in _importable_algos():
        rows += describe(algo_module(name).Config, "agent.")
    undocumented = [r[0] for r in rows if not r[3]]
    assert not undocumented, f"fields without doc(): {undocumented}"


def test_algo_yaml_files_belong_to_registered_algorithms():
    files = sorted(p.stem for p in (configs_root() / "algo").glob("*.yaml"))
    assert "bc" in files
    assert set(files) <= set(ALGOS), f"presets for unknown algorithms: {set(files) - set(ALGOS)}"


def test_unknown_algorithm():
    with pytest.raises(UnknownAlgorithm, match="unknown algorithm 'patchial'; did you mean patchail"):
        algo_module("patchial")


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
@pytest.mark.parametrize("algo", _importable_algos())
def test_every_algo_preset_resolves(algo, preset):
    module = algo_module(algo)
    cfg = resolve(algo, module.Config, "toy:reach", preset)
    assert isinstance(cfg.agent, module.Config)
    assert cfg.algo == algo
    # The dmc layer too, where the papers' settings live.
    cfg = resolve(algo, module.Config, "dmc:cheetah_run", preset)
    assert cfg.env.id == "dmc:cheetah_run"
    if preset == "smoke":
        assert cfg.train.env_steps <= 2000 and cfg.train.offline_updates <= 200, "smoke must take seconds"


def test_configs_are_package_data():
    """An installed vmil finds its presets through the `configs` package."""
    assert (configs_root() / "size" / "smoke.yaml").is_file()
    assert Path(importlib.import_module("configs").__file__).parent == configs_root()


def test_env_settings_without_an_algorithm():
    from vmil.config import EnvConfig, resolve_env

    env = resolve_env("dmc:cheetah_run", "cpu")
    assert isinstance(env, EnvConfig) and env.id == "dmc:cheetah_run"
    dmc = yaml.safe_load((configs_root() / "env" / "dmc.yaml").read_text())
    assert env.action_repeat == dmc["defaults"]["env"]["action_repeat"]
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_env("toy:reach", "fast")


def test_proprio_is_an_env_setting_on_for_baoding():
    from vmil.config import resolve_env

    assert resolve_env("baoding:ccw", "cpu").proprio is True
    assert resolve_env("dmc:cheetah_run", "cpu").proprio is False
    from imitation.bc import Config

    cfg = resolve("bc", Config, "toy:reach", "smoke", ["env.proprio=true"])
    assert cfg.env.proprio is True


def test_removed_num_workers_key():
    """env.num_workers was never read by the runner; saved configs holding its old default still
    load, any other value is refused with the reason."""
    from imitation.bc import Config
    from vmil.config import EnvConfig

    assert from_dict(EnvConfig, {"id": "toy:reach", "num_workers": 1}) == EnvConfig(id="toy:reach")
    with pytest.raises(ConfigError, match="env.num_workers' was removed: the runner collects with one env"):
        resolve("bc", Config, "toy:reach", "smoke", ["env.num_workers=2"])
