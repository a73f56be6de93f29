# Every target runs from a fresh clone with only Go installed: tools are pinned
# in go.mod (tool lines) and run with `go tool`.
GO ?= go
STATE_DIR ?= .qkdnet

.PHONY: demo test test-race lint gen check-generated bench build

## demo: start the paper's Fig. 4 testbed (two nodes, one emulated QKD link, two SAEs) and watch SAE_A send to SAE_B
demo:
	$(GO) run ./cmd/qkdnet demo --state-dir $(STATE_DIR)

## test: lint-free unit, integration and crash tests
test:
	$(GO) test -count=1 -timeout 15m ./...

test-race:
	$(GO) test -race -count=1 -timeout 20m ./...

build:
	$(GO) build -o bin/ ./cmd/...

## gen: regenerate protobuf/gRPC/gateway/OpenAPI code into gen/
gen:
	$(GO) tool buf generate

## lint: buf lint, go vet, gofmt
lint:
	$(GO) tool buf lint
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## check-generated: fail when gen/ is not what `make gen` produces
check-generated: gen
	@if [ -n "$$(git status --porcelain -- gen)" ]; then echo "generated code is stale; run make gen and commit:"; git status --porcelain -- gen; exit 1; fi

## bench: start a network with a fast emulated link and drive ETSI 014 from 16 concurrent SAEs
bench:
	$(GO) run ./cmd/qkdload --start --state-dir .qkdnet-bench
