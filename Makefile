# kubectl rotate-certs. The README's two commands are `make demo` and `make test`;
# both install everything they need on a fresh Debian machine.
SHELL := /bin/bash
VERSION ?= $(shell hack/version.sh)
LDFLAGS := -s -w -buildid= -X github.com/rotate-certs/kubectl-rotate-certs/pkg/version.Version=$(VERSION)
BIN := bin/kubectl-rotate_certs

.PHONY: build test test-unit fuzz e2e demo image dist test-krew lint vet clean

build:
	CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/kubectl-rotate_certs

# Everything CI runs: vet, gofmt and golangci-lint, unit tests, fuzzing,
# krew packaging tests, and the kind e2e suite.
test: vet lint test-unit fuzz test-krew e2e

vet:
	go vet ./...
	go vet -tags e2e ./test/...
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt needed: $$bad"; exit 1; fi

test-unit:
	go test -short -count=1 ./...

# Every fuzz target of the parsers of node-supplied data, briefly
# (FUZZTIME, default 10s each), from the committed seed corpus.
fuzz:
	hack/fuzz.sh

e2e:
	VERSION=$(VERSION) hack/e2e.sh

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
