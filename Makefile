# Two entry points: `make demo` (the released tiny model on the bundled held-out photos) and `make test` (the suite);
# `make demo-train` retrains every stage first; `make release-train` trains and packages the tiny release under
# runs/release; `make demo-report` rewrites experiments/demo_tiny from a clean tree;
# `make test-full` runs the full-size paths on random weights (57 minutes on 2 idle cores);
# `make test-cluster` (as root) starts a one-node SLURM cluster, runs the cluster tests on it and stops it again.
# `make test-browser` (as root) installs Debian's chromium and chromium-driver when missing and runs the browser tests
# (the report page and the web demo in headless Chromium).
# `make test-samples` (as root) installs the bundled photos' sources when missing (Debian's lomiri-wallpapers-16.04,
# scikit-learn 1.9.1 into .venv) and checks that data/make_samples.py rewrites data/samples byte for byte (a source still
# missing there fails the tests instead of skipping them).
# Both create .venv when missing and (re)install when pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: demo demo-train demo-report release-train test test-slow test-full test-cluster test-browser test-samples install

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version" || { echo "Python 3.11 is required (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# demo and demo-report run every command in reproducible mode (sr/reproducibility.py: pinned CPU numerics, 2 threads),
# so the scores equal the committed tables; the recipe trains in the faster default mode (scripts/release.py
# --reproducible pins it too, about 2x slower).
demo: $(STAMP)
	$(PY) scripts/demo.py

demo-train: $(STAMP)
	$(PY) scripts/demo.py --train

demo-report: $(STAMP)
	$(PY) scripts/demo.py --commit-report

release-train: $(STAMP)
	$(PY) scripts/release.py

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m 'slow and not full'

# The full-size SD-2.1 stage 1 (512 and 768v), CFW and upscale/eval commands with random weights (tests/test_full_size.py):
# up to an hour and 20 GB peak RSS on 2 CPU cores; prints each command's wall time and peak RSS.
test-full: $(STAMP)
	$(PY) -m pytest -q -s -m full tests/test_full_size.py

test-cluster: $(STAMP)
	scripts/slurm_local.sh start
	$(PY) -m pytest -q -s -m cluster tests/test_cluster.py; status=$$?; scripts/slurm_local.sh stop; exit $$status

test-browser: $(STAMP)
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; }
	$(PY) -m pytest -q -m browser tests/test_browser.py

test-samples: $(STAMP)
	@dpkg -s lomiri-wallpapers-16.04 >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lomiri-wallpapers-16.04; }
	$(PY) -m pip install --quiet -e '.[samples]'
	SR_REQUIRE_SAMPLE_SOURCES=1 $(PY) -m pytest -q tests/test_data.py -k make_samples -rs
