# Set-up and the main jobs. `make demo` and `make test` each install what they need first:
# system packages for headless EGL rendering (apt, when missing), a virtual environment in .venv,
# torch 2.13.0 (the CPU wheel when no NVIDIA GPU is present), then vmil itself in editable mode.
# Without a GPU the CPU wheel is wanted: on the reference machines `pip install torch==2.13.0` finds it on
# local disk; elsewhere set TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu to take it from PyTorch's index.
# Re-running is fast: the install step is skipped while .venv/.vmil-installed is newer than setup.py.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VMIL := $(VENV)/bin/vmil
STAMP := $(VENV)/.vmil-installed
TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX ?=
APT_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri
EXTRAS ?= dev,robotics
export MUJOCO_GL ?= egl

# The main job: VMIL from 100 observation-only scripted-expert demos of toy:reach (a numpy-drawn
# point that must reach a goal disc; every episode draws a new goal), the cpu preset, evaluation,
# everything logged to the embedded MLflow store ./mlflow.db. Other tasks and algorithms:
#   make demo DEMO_ENV=dmc:cartpole_swingup        (10 demos; VMIL learns it only partly on a CPU)
#   make demo DEMO_ALGO=bc DEMO_ENV=dmc:cartpole_swingup   (demos with actions, ~5 minutes)
DEMO_ENV ?= toy:reach
DEMO_ALGO ?= vmil
DEMO_EPISODES ?= $(if $(filter toy:%,$(DEMO_ENV)),100,10)
DEMO_PRESET ?= cpu
DEMO_DIR ?= demos/$(subst :,-,$(DEMO_ENV))-$(DEMO_ALGO)
DEMO_EVAL_EPISODES ?= 10
TRACKING_URI ?= sqlite:///mlflow.db
# One torch thread: a second one stalls whenever another process holds a core, which turned
# minutes into hours on a busy machine. BC: the preset's 2000 updates, evaluated once at the end.
# Other algorithms, and other presets, run the plain preset. Override: make demo DEMO_OVERRIDES="...".
DEMO_OVERRIDES_bc := threads=1 train.eval_every=2000 train.eval_episodes=3
DEMO_OVERRIDES_vmil := threads=1
DEMO_OVERRIDES ?= $(if $(filter cpu,$(DEMO_PRESET)),$(DEMO_OVERRIDES_$(DEMO_ALGO)),)

.PHONY: demo test test-slow test-notebooks install system-deps clean-runs

demo: $(STAMP)
	@set -euo pipefail; \
	if ! ls $(DEMO_DIR)/*.npz >/dev/null 2>&1; then \
	  echo "== recording $(DEMO_EPISODES) scripted-expert demos of $(DEMO_ENV) in $(DEMO_DIR)"; \
	  $(VMIL) demos record --env $(DEMO_ENV) --expert scripted --episodes $(DEMO_EPISODES) --out $(DEMO_DIR) \
	    --algo $(DEMO_ALGO) --preset $(DEMO_PRESET) $(if $(filter bc,$(DEMO_ALGO)),--keep-actions,); \
	else \
	  echo "== using the demos in $(DEMO_DIR)"; $(VMIL) demos inspect $(DEMO_DIR); \
	fi; \
	run=runs/demo-$(DEMO_ALGO)-$$(date +%Y%m%d-%H%M%S); \
	echo "== training $(DEMO_ALGO) on them ($(DEMO_PRESET) preset$(if $(strip $(DEMO_OVERRIDES)), + $(strip $(DEMO_OVERRIDES)),)) in $$run"; \
	$(VMIL) train --algo $(DEMO_ALGO) --env $(DEMO_ENV) --demos $(DEMO_DIR) --preset $(DEMO_PRESET) \
	  --run-dir $$run --tracking-uri $(TRACKING_URI) $(DEMO_OVERRIDES); \
	echo "== evaluating $$run (video: $$run/eval.mp4)"; \
	$(VMIL) eval $$run --episodes $(DEMO_EVAL_EPISODES) --video $$run/eval.mp4; \
	echo; \
	echo "Done. Run directory: $$run (summary.json, config.yaml, checkpoints/, eval.mp4)"; \
	echo "MLflow store: $(TRACKING_URI); browse it with:"; \
	echo "  $(VENV)/bin/mlflow ui --backend-store-uri $(TRACKING_URI)"

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q --timeout=900
	$(PY) -m pytest --nbmake notebooks -q --timeout=900

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q --timeout=3600

test-notebooks: $(STAMP)
	$(PY) -m pytest --nbmake notebooks -q --timeout=1800

install: $(STAMP)

$(STAMP): setup.py | system-deps
	@set -euo pipefail; \
	if [ ! -x $(PY) ]; then echo "== creating $(VENV)"; $(PYTHON) -m venv $(VENV); fi; \
	$(PY) -m pip install -q --upgrade pip; \
	if ! $(PY) -c "import torch" >/dev/null 2>&1; then \
	  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	    echo "== installing torch $(TORCH_VERSION) (CUDA)"; $(PY) -m pip install -q torch==$(TORCH_VERSION); \
	  else \
	    echo "== installing torch $(TORCH_VERSION) (CPU wheel: no NVIDIA GPU found)"; \
	    $(PY) -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_CPU_INDEX),--extra-index-url $(TORCH_CPU_INDEX),); \
	  fi; \
	fi; \
	echo "== installing vmil[$(EXTRAS)]"; \
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"; \
	touch $(STAMP)

# Headless MuJoCo rendering needs EGL (Debian packages); python3 -m venv needs ensurepip.
system-deps:
	@set -euo pipefail; \
	missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c "import ensurepip" >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "please install the system packages$$missing (EGL for headless rendering) and run make again" >&2; exit 1; \
	  fi; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "== installing system packages:$$missing"; \
	  $$sudo apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

clean-runs:
	rm -rf runs mlruns mlflow.db
