# uniter: see README.md. `make test` is the whole suite, `make demo` the
# embedded default end to end on the CPU.
GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
PY      ?= /usr/bin/python3

.PHONY: all setup gloo-shim build test bench demo cuda cuda-check golden fmt vet clean

all: build

setup:
	@./scripts/setup.sh

# The Gloo shim (C API over libgloo) that internal/dist embeds and dlopens
# at first use, so bin/uniter itself never links libgloo and starts where
# it is missing; a plain `go build` works too, just without multi-process
# CPU training.
GLOO_SHIM := internal/dist/glooshim/libuniter_gloo.so

gloo-shim: $(GLOO_SHIM)

$(GLOO_SHIM): internal/dist/glooshim/shim.cc | setup
	g++ -O2 -fPIC -shared -std=c++17 -Wall -o $@ $< -lgloo

build: setup gloo-shim
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/uniter ./cmd/uniter

test: setup gloo-shim
	$(GO) vet ./...
	UNITER_REQUIRE_GLOO=1 $(GO) test -count=1 ./...

# CPU benchmarks: Go micro-benchmarks, then the base model next to the
# PyTorch reference on the same batch and threads (needs python3-torch).
bench: build
	$(GO) test -run '^$$' -bench . -benchtime 3x ./internal/compute/
	bin/uniter bench --model base --device cpu --mode fwdbwd --batch 8 --txt-len 40 --nbb 50 --threads 2
	-$(PY) scripts/bench_torch.py --mode fwdbwd --batch 8 --txt-len 40 --nbb 50 --threads 2 --steps 5
	bin/uniter bench --model base --device cpu --task vqa --mode train --batch 8 --txt-len 40 --nbb 50 --threads 2 --steps 5
	-$(PY) scripts/bench_torch.py --task vqa --mode train --batch 8 --txt-len 40 --nbb 50 --threads 2 --steps 5

# Pretrain a tiny UNITER on the synthetic world (CPU), evaluate it and its
# untrained start on held-out data; summary in runs/demo/summary.json.
demo: build
	./scripts/demo.sh

# CUDA build: Debian's 11.8 toolkit (installed on demand).
cuda: gloo-shim
	@./scripts/setup.sh cuda
	$(MAKE) -C kernels
	$(GO) build -tags cuda -ldflags "$(LDFLAGS)" -o bin/uniter ./cmd/uniter

# What CI checks of the CUDA path: every kernel compiles, vet and build pass.
cuda-check: gloo-shim
	@./scripts/setup.sh cuda
	@if ls kernels/*.cu >/dev/null 2>&1; then $(MAKE) -C kernels; else echo "cuda-check: no kernels yet"; fi
	$(GO) vet -tags cuda ./...
	$(GO) build -tags cuda -o /dev/null ./cmd/uniter

# Regenerate the golden data from the PyTorch reference (python3-torch).
golden:
	$(PY) scripts/gen_golden.py
	$(PY) scripts/finetune_ref.py
	$(PY) scripts/gen_finetune_fixtures.py
	$(PY) scripts/pretrain_val_ref.py
	$(PY) scripts/re_ref.py

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...

clean:
	rm -rf bin runs $(GLOO_SHIM)
