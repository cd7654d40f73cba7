# fedinv: `make demo` runs the main job on Fashion-MNIST, `make test` runs the tests.
# Both set up everything they need on a fresh machine.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
RUN    ?= runs/demo
FMNIST := /usr/share/datasets/fashion-mnist

# torchvision from the registry imports only with the registry's own torch build. Some machines
# carry a CPU-only torch wheel in a local find-links folder (and pip prefers its "+cpu" version),
# so installs ignore local pip configuration and take both from the package registry.
PIP := env PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(PY) -m pip

.PHONY: install data demo test bench credentials clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0 torchvision==0.28.0
	$(PIP) install --quiet -e '.[dev,flower]'
	$(PY) -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

# Fashion-MNIST comes from Debian's package where apt is available; elsewhere pass --download.
data:
	@if [ -d $(FMNIST) ]; then echo "Fashion-MNIST found in $(FMNIST)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	else echo "no apt-get here: fedinv will download Fashion-MNIST with --download"; fi

# The one-shot pipeline on Fashion-MNIST (assets/configs/demo.toml): partition, teachers,
# synthesis, student, evaluation and image grids in $(RUN). Rerunning continues where an
# interrupted run stopped.
demo: install data
	$(VENV)/bin/fedinv run assets/configs/demo.toml --out $(RUN)

test: install
	$(PY) -m pytest -q

# The studies under experiments/ (each: `python -m bench run experiments/NAME`, see experiments/README.md).
bench: install data
	$(PY) -m bench list

# A local CA, a SuperLink certificate and SuperNode key pairs, for trying the encrypted and
# authenticated Flower deployment on one machine (README, "Across machines").
CREDS ?= runs/credentials
NODES ?= 2
credentials: install
	$(PY) -m fedinv.flower.credentials $(CREDS) --nodes $(NODES)

clean:
	rm -rf $(VENV) runs .pytest_cache
