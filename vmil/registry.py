"""Algorithm names -> the module that implements them, imported only when used.

Each module provides ``Config`` (a frozen dataclass; variants share a module and differ by their
YAML preset in ``configs/algo/<name>.yaml``) and
``build(cfg, spec: EnvSpec, device: torch.device, demos: DemoInfo | None) -> Agent``; a module
whose algorithm learns from the true reward sets ``NEEDS_DEMOS = False`` (its demos, when given, only
set the normalised score).
"""
from __future__ import annotations

import difflib
import importlib
from types import ModuleType

ALGOS: dict[str, str] = {
    "bc": "imitation.bc",
    "vmil": "imitation.vmil",
    "drqv2": "vmil.rl.drqv2",
    "ppo": "vmil.rl.ppo",
    "gail": "imitation.rm",
    "gaifo": "imitation.rm",
    "rm": "imitation.rm",
    "rm-l-l": "imitation.rm",
    "rm-l-nl": "imitation.rm",
    "rm-nl-nl": "imitation.rm",
    "dreamer": "vmil.rl.dreamer",
    "sqil": "imitation.patchail",
    "patchail": "imitation.patchail",
    "patchail-w": "imitation.patchail",
    "patchail-b": "imitation.patchail",
    "patchail-bc": "imitation.patchail",
    "shared-enc-ail": "imitation.patchail",
    "ind-enc-ail": "imitation.patchail",
    "bco": "imitation.bco",
    "ilpo": "imitation.ilpo",
    "imrl": "imitation.imrl",
    "pmi": "imitation.pmi",
}


class UnknownAlgorithm(ValueError):
    pass


def algo_module(name: str) -> ModuleType:
    if name not in ALGOS:
        near = difflib.get_close_matches(name, list(ALGOS), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise UnknownAlgorithm(f"unknown algorithm '{name}'{hint} (valid: {', '.join(sorted(ALGOS))})")
    return importlib.import_module(ALGOS[name])
