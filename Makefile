# Front door. `make demo` runs the main job, `make test` the test suite; each sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml Makefile; echo "$(TORCH_INDEX_URL)") | cksum | cut -d' ' -f1)
ARGS ?=
PYTEST_ARGS ?=
# Exact torch pair: both install from local files on the build machines; an unpinned torch
# would download a multi-GB build, and a mismatched torchvision fails at import.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Where the torch pair comes from. Empty (default): pip's configured indexes, which give the CUDA build
# (NVIDIA libraries + triton: 4.0 GiB of the 6.5 GiB venv); it is what installs on the build machines.
# CPU wheels (venv about 2 GiB, README): make clean-venv venv TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=

.PHONY: venv tools demo test test-slow test-serving-install lint images test-images soak loadtest bench k8s-render monitoring clean-venv

$(STAMP):
	rm -f $(VENV)/.installed-*
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX_URL),--index-url "$(TORCH_INDEX_URL)") $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e ".[train,cpu,serve,kserve,load,dev,data,monitoring]"
	# torchattacks pins requests~=2.25 (conflicts with locust); its real needs are declared above.
	$(BIN)/python -m pip install -q --no-deps "torchattacks==3.5.1"
	touch $@

venv: $(STAMP)

# Prometheus + promtool for the monitoring tests (apt-get, only when missing and root).
tools:
	bash .ci/install-prometheus.sh

demo: venv
	$(BIN)/clipshield demo $(ARGS)

test: venv tools lint
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: venv
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

# The serving installs (.[serve-kserve], .[serve-torchserve]) from the built wheel, in fresh venvs outside the
# checkout: archive, release, serve, --ping, --stop and one request each (pip installs: minutes; part of test-slow).
test-serving-install: venv
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q -m slow tests/slow/test_serving_install.py $(PYTEST_ARGS)

# ruff (lint + format check) and mypy, configured in pyproject.toml (mypy: strict on service/).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	mkdir -p build/typecheck && ln -sfn ../.. build/typecheck/clipshield
	$(BIN)/mypy

# The serving images with buildah (chroot isolation, vfs storage), through the shared CPU lock; official bases when they
# can be pulled, else stand-ins bootstrapped from Debian packages (docs/deploy.md). `make images IMAGES="serve"` for TorchServe
# (torch from the official CPU index, else the machine's local CPU wheel: the build log says which).
IMAGES ?= serve-kserve model
images:
	flock /tmp/clipshield-heavy.lock deploy/images/build.sh $(IMAGES)

# Build serve-kserve and serve (TorchServe) and run each as the cluster does (uid 1000, read-only root and model): real
# clients, the bad-input matrix, a tampered bundle/archive (tests/slow/test_images.py, test_image_torchserve.py; root,
# buildah). CLIPSHIELD_IMAGES_REUSE=1 keeps a built image.
test-images: venv
	OMP_NUM_THREADS=2 flock /tmp/clipshield-heavy.lock $(BIN)/python -m pytest -q -m slow tests/slow/test_images.py tests/slow/test_image_torchserve.py $(PYTEST_ARGS)

# The soak: 10 minutes of moderate load per runtime (0 errors, RSS growth <= 10 %, p95 drift <= 20 %), through the
# shared CPU lock; summaries in results/soak/. The same check as a slow test: tests/slow/test_soak.py.
soak: venv
	for r in kserve torchserve; do OMP_NUM_THREADS=1 flock /tmp/clipshield-heavy.lock $(BIN)/python -m tests.load.soak --runtime $$r --minutes 10 --out results/soak/$$r.json || exit 1; done

loadtest: venv
	OMP_NUM_THREADS=2 $(BIN)/python -m tests.load.run_loadtest $(ARGS)

bench: venv
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/bench_pgd.py
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/bench_finetune.py
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/bench_serving.py

k8s-render:
	for o in cpu gpu; do kubectl kustomize k8s/overlays/$$o > k8s/rendered/$$o.yaml; done
	kubectl kustomize k8s/monitoring > k8s/rendered/monitoring.yaml

# Regenerate the Prometheus rules, their promtool tests and the Grafana dashboard from service/metrics.py,
# and TorchServe's metrics.yaml + config.properties (model_store/, k8s/), then re-render k8s/rendered/.
monitoring: venv
	$(BIN)/python -m monitoring.generate
	$(MAKE) k8s-render

clean-venv:
	rm -rf $(VENV)
