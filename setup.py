"""vmil: visual imitation learning from observation (VMIL and model-free baselines on one pipeline)."""
import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r'^__version__ = "([^"]+)"', (here / "vmil" / "__init__.py").read_text(), re.M).group(1)
readme = here / "README.md"

setup(
    name="vmil",
    version=version,
    description="Visual imitation learning from observation: VMIL (model-based) and model-free baselines",
    long_description=readme.read_text() if readme.exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["vmil", "vmil.*", "world_model", "world_model.*",
                                    "imitation", "imitation.*", "configs"]),
    # YAML presets ship inside the `configs` package so an installed vmil finds them.
    package_data={"configs": ["*.yaml", "*/*.yaml"]},
    # The simulator stack is pinned to versions verified together on Python 3.11 / Debian 12:
    # metaworld 3.1.1 needs mujoco 3.3.0, and dm_control 1.0.28 is the newest that runs on it.
    # torch: the README installs torch==2.13.0 (CPU wheel) first; this range accepts it as is.
    install_requires=[
        "torch>=2.13",
        "numpy>=2.0,<3",
        "mujoco==3.3.0",
        "dm_control==1.0.28",
        "gymnasium[mujoco,classic-control]==1.4.0",
        "packaging>=24",  # gymnasium imports it without declaring it
        "einops>=0.8,<1",
        "mlflow>=3.1,<4",
        "imageio>=2.37,<3",
        "imageio-ffmpeg>=0.6,<1",
        "tqdm>=4.66,<5",
        "pyyaml>=6,<7",
        "matplotlib>=3.9,<4",
        # `vmil compare`'s statistics (stratified bootstrap, IQM, profiles); rliable 1.2 breaks on pandas 3.
        "rliable==1.2.0",
        "scipy>=1.11",
        "pandas>=2,<3",
    ],
    extras_require={
        # ray is in dev too: the sweep test runs a local Ray instance (one ~65 MB wheel, ~10 s of the suite).
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "nbmake>=1.5", "ipykernel>=6", "ray==2.60.0"],
        "robotics": ["metaworld==3.1.1", "gymnasium-robotics==1.4.2"],
        "atari": ["ale-py>=0.9"],
        "ray": ["ray==2.60.0"],  # `vmil sweep` (a local instance by default, or a cluster with --address)
    },
    entry_points={"console_scripts": ["vmil=vmil.cli:main"]},
)
