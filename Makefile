# onnxsmith: `make run` (main job) and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages: the aarch64 cross toolchain and user-mode emulator (TVM ARM targets), Chromium (HTML report test),
# cmake and g++ (the deployment programs' tests build the C++ ones; g++-aarch64-linux-gnu cross-compiles TVM's).
APT_PACKAGES := gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user chromium cmake g++
EXAMPLE := onnxsmith/examples/digits
BUNDLE  ?= out/digits-host

.PHONY: install run test test-all bench clean system-deps

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(MAKE) system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU build; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[all,dev]'
	# Triton: the client and the server wheel (tritonserver + Python backend), --no-deps (see pyproject's serving).
	$(BIN)/pip install -q --no-deps -c constraints.txt tritonclient==2.73.0 nvidia-pytriton==0.7.0
	# arm64 TVM runtime wheels (not installed here): run TVM aarch64 artifacts under qemu-user via RPC.
	$(BIN)/pip download -q --only-binary=:all: --no-deps --platform manylinux_2_28_aarch64 --python-version 3.11 \
	  -d $(VENV)/aarch64-wheels apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1
	touch $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ]; then $$SUDO apt-get update -qq && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: missing Debian packages:$$missing (not root, no sudo: ARM and browser tests will skip)"; fi; \
	fi

run: install
	$(BIN)/onnxsmith compile $(EXAMPLE)/digits_cnn.onnx --target host -o $(BUNDLE)
	$(BIN)/onnxsmith profile $(BUNDLE)
	$(BIN)/onnxsmith validate $(BUNDLE) --data $(EXAMPLE)/validation.npz --labels label
	@echo "bundle: $(BUNDLE)  (report: $(BUNDLE)/report.md)"

test: install
	$(BIN)/python -m pytest -q -n 2 --durations=15

test-all: install
	$(BIN)/python -m pytest -q -n 2 -m ""

bench: install
	$(BIN)/python -m tests.bench.run

clean:
	rm -rf out .bench
