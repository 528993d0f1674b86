# stemstream developer commands. `make test` works on a fresh Debian/Ubuntu machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := libfluidsynth3 fluid-soundfont-gm timgm6mb-soundfont musescore-general-soundfont-small avldrums.lv2-soundfont chromium

.PHONY: test test-fast system-deps venv bench gpu-bundle clean

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[test,models]"
	$(PY) -m pip install -q --no-deps openunmix==1.3.0 demucs==4.1.0
	touch $@

venv: system-deps $(VENV)/.installed

# every test (what CI runs); test-fast skips the end-to-end, fault and multi-process ones (`slow`)
test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

bench: venv
	@command -v fluidsynth >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq fluidsynth >/dev/null; }
	$(PY) bench/synth.py
	$(PY) bench/stream.py
	$(PY) bench/stream_transport.py
	$(PY) bench/broker_capacity.py
	$(PY) bench/train.py
	$(PY) bench/models.py
	$(PY) bench/eval.py

# The offline GPU benchmark bundle (needs the registries here; nothing is fetched on the GPU box).
# GPU_PYTHON / GPU_GLIBC: the box's CPython and the newest manylinux glibc it takes; GPU_CORPUS: MIDI to ship.
GPU_BUNDLE ?= dist/gpu-bundle
GPU_PYTHON ?= 3.12
GPU_GLIBC  ?= 2.28
GPU_CORPUS ?=
gpu-bundle: venv
	$(PY) bench/make_gpu_bundle.py --out $(GPU_BUNDLE) --python-version $(GPU_PYTHON) --glibc $(GPU_GLIBC) \
	  $(if $(GPU_CORPUS),--corpus $(GPU_CORPUS))

clean:
	rm -rf $(VENV) .pytest_cache
