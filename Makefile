# tf-puma: `make demo` (set-up, then the main job) and `make test` (set-up, then every test).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
BAZEL ?= bazel
BAZEL_FLAGS := --repo_env=PYTHON_BIN_PATH=$(abspath $(PY))
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Tests run as several pytest processes, TEST_WORKERS at a time, each with its own three local
# parties (conversion and tracing are single-threaded Python). Each real-model module gets a
# process that exits when it is done: a long-lived process keeps every model it converted (two
# pytest-xdist workers reached 5.3 and 3.8 GiB and CI's 24 GiB), see tests/run_in_processes.py.
TEST_WORKERS ?= 2
PYTEST := $(PY) tests/run_in_processes.py -n $(TEST_WORKERS)

.PHONY: system-tools spu-venv setup build bazel-build test test-fast test-bazel demo serve-demo bench clean

$(STAMP): requirements.txt requirements-nodeps.txt setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	# A venv that once pulled the CUDA `tensorflow` package over tensorflow-cpu gets cpu back.
	if $(PIP) show -q tensorflow 2>/dev/null; then $(PIP) uninstall -y -q tensorflow && \
	  $(PIP) install -q --force-reinstall --no-deps "$$(grep '^tensorflow-cpu' requirements.txt)"; fi
	$(PIP) download -q --no-deps --no-binary :all: vadersentiment==3.3.2 -d data
	touch $(STAMP)

# stunnel (Debian's stunnel4) carries the mutual-TLS links of `--tls-dir` deployments.
system-tools:
	@command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || \
	  { command -v apt-get >/dev/null && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4; }; } >/dev/null; } || \
	  echo "note: stunnel4 is not installed (apt-get install stunnel4): --tls-dir and tests/test_tls.py need it"

setup: $(STAMP) system-tools

# The reference implementation (SPU 0.9.5: numpy<2, jax 0.4.34) in its own venv, for the
# benchmarks' --reference columns (not needed by tf-puma or its tests).
SPU_VENV := .venv-spu
$(SPU_VENV)/.installed: benchmarks/requirements-spu.txt
	test -x $(SPU_VENV)/bin/python || python3 -m venv $(SPU_VENV)
	$(SPU_VENV)/bin/pip install -q -r benchmarks/requirements-spu.txt
	touch $@

spu-venv: $(SPU_VENV)/.installed

# The op library with the system compiler (setup.py) -> tf_puma/_puma_ops.so
build: setup
	$(PIP) install -q --no-build-isolation --no-deps -e .

# The same library with Bazel (offline) -> bazel-bin/custom_ops/_puma_ops.so
bazel-build: setup
	$(BAZEL) build $(BAZEL_FLAGS) //custom_ops:_puma_ops.so //custom_ops:_puma_bind.so

test: build bazel-build
	$(PYTEST)
	TF_PUMA_OPS_LIBRARY=$(abspath bazel-bin/custom_ops/_puma_ops.so) $(PY) -m pytest -q tests/test_kernels.py

# Everything but the whole-model tests (pytest -m "not slow"): for local iteration.
test-fast: build
	$(PYTEST) -m "not slow"

demo: build
	$(PY) -m tf_puma.apps.demo

serve-demo: build
	$(PY) -m tf_puma.apps.serve_demo

bench: build
	$(PY) benchmarks/ring_gemm.py
	$(PY) benchmarks/prg.py
	$(PY) benchmarks/secure_matmul.py

clean:
	rm -rf build tf_puma/_puma_ops.so tf_puma/_puma_bind.so *.egg-info
	-$(BAZEL) clean
