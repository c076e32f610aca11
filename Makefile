# kubectl rotate-certs. The README's two commands are `make demo` and `make test`;
# both install everything they need on a fresh Debian machine.
SHELL := /bin/bash
VERSION ?= $(shell hack/version.sh)
LDFLAGS := -s -w -buildid= -X github.com/rotate-certs/kubectl-rotate-certs/pkg/version.Version=$(VERSION)
BIN := bin/kubectl-rotate_certs

.PHONY: build test test-unit fuzz e2e e2e-oldest e2e-matrix bench demo image dist test-krew lint vet clean

build:
	CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/kubectl-rotate_certs

# The oldest and newest Kubernetes versions the e2e suite proves (hack/nodeimage/kubernetes/).
KUBE_OLDEST ?= v1.35.4
KUBE_NEWEST ?= v1.37.2

# Everything CI runs: vet, gofmt and golangci-lint, unit tests, fuzzing, krew
# packaging tests, the kind e2e suite on the newest Kubernetes, and --all on the oldest
# (hack/test.sh builds both node images in the background meanwhile).
test:
	VERSION=$(VERSION) KUBE_NEWEST=$(KUBE_NEWEST) KUBE_OLDEST=$(KUBE_OLDEST) hack/test.sh

vet:
	go vet ./...
	go vet -tags e2e ./test/...
	go vet -tags bench ./test/...
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt needed: $$bad"; exit 1; fi

test-unit:
	go test -short -count=1 ./...

# Every fuzz target of the parsers of node-supplied data, briefly
# (FUZZTIME, default 5s each), from the committed seed corpus.
fuzz:
	hack/fuzz.sh

e2e:
	VERSION=$(VERSION) KUBE_VERSION=$(KUBE_NEWEST) hack/e2e.sh

# --all (the "all keeps the API up" scenario and its checks) on the oldest version.
e2e-oldest:
	VERSION=$(VERSION) KUBE_VERSION=$(KUBE_OLDEST) ROTATE_CERTS_E2E_HA=0 E2E_RUN='^TestRotate$$/^all_keeps_the_API_up$$' hack/e2e.sh

# The rotation scenarios (--all, --service etcd, --service kubelet, HA --all, ECDSA-P384) on
# every supported version, with a table of the results.
e2e-matrix:
	VERSION=$(VERSION) hack/e2e-matrix.sh

# Rotation against kubeadm's manual procedure on kind (1+2 and 3+1 nodes, under API
# load), the footprint and the 10/100/1000-worker simulation: writes docs/benchmarks.md,
# docs/benchmarks/*.json and the HA timeline SVG. Not part of make test (~35 min).
bench:
	VERSION=$(VERSION) hack/bench.sh

demo:
	VERSION=$(VERSION) hack/demo.sh

image:
	VERSION=$(VERSION) hack/build-image.sh

dist:
	VERSION=$(VERSION) hack/dist.sh

test-krew:
	VERSION=$(VERSION) hack/test-krew.sh

lint:
	hack/lint.sh

clean:
	rm -rf bin dist _output
