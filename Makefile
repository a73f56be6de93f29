# Every target runs from a fresh clone with only Go installed: tools are pinned
# in go.mod (tool lines) and run with `go tool`.
GO ?= go
STATE_DIR ?= .qkdnet

.PHONY: demo test test-race lint gen check-generated bench bench-controller bench-relay build fuzz image image-check k8s-manifests chaos soak

## demo: start the paper's rooftops A-B-C (3 controller replicas, 3 nodes, 2 emulated QKD links) and watch SAE_A send to SAE_C through B
demo:
	$(GO) run ./cmd/qkdnet demo --state-dir $(STATE_DIR)

## test: lint-free unit, integration and crash tests
test:
	$(GO) test -count=1 -timeout 15m ./...

## test-race: every test under the race detector, the e2e agents and controllers too
test-race:
	QKDNET_E2E_RACE=1 $(GO) test -race -count=1 -timeout 20m ./...

## chaos: run the rooftops network under ETSI 014 load for CHAOS_DURATION (default 90s) while killing, pausing,
## disk-filling and partitioning its processes at random (CHAOS_SEED to replay a run); fails on any invariant violation
CHAOS_DURATION ?= 90s
CHAOS_SEED ?= 0
chaos:
	$(GO) run ./cmd/qkdchaos chaos --duration $(CHAOS_DURATION) --seed $(CHAOS_SEED)

## soak: the same network under steady load for SOAK_DURATION (default 10m): memory and goroutines at start and end,
## keys/s and latency percentiles per minute
SOAK_DURATION ?= 10m
soak:
	$(GO) run ./cmd/qkdchaos soak --duration $(SOAK_DURATION)

## bench-relay: one hop vs two hops through a relay node, and ETSI 004 OPEN_CONNECT to first key
bench-relay:
	$(GO) test -run XXX -bench Relay -benchtime 1x ./e2e/

build:
	$(GO) build -o bin/ ./cmd/...

## gen: regenerate protobuf/gRPC/gateway/OpenAPI code and the ETSI 015 (YANG) Go structs into gen/
# buf runs first: its `clean: true` empties gen/go before it writes.
# ETSI 015 structs: yangflatten inlines the uses-with-augment that goyang
# ignores (app_qos's clients_shared_* leaves; ygot issue 605); the ygot
# generator reads that copy and our augmentations; sed drops the module-cache
# directory ygot writes into the header, so the output is the same everywhere.
gen:
	$(GO) tool buf generate
	$(GO) run ./qkd015/internal/yangflatten -o gen/go/etsi015/etsi-qkd-sdn-node.yang yang/etsi-qkd-sdn-node.yang
	$(GO) tool generator -path=yang -output_file=gen/go/etsi015/etsi015.go.tmp \
		-package_name=etsi015 -compress_paths=false -ignore_unsupported \
		-generate_fakeroot -fakeroot_name=device -include_schema \
		-generate_getters -generate_leaf_getters -generate_leaf_setters \
		-generate_append -generate_delete -generate_simple_unions -typedef_enum_with_defmod \
		gen/go/etsi015/etsi-qkd-sdn-node.yang yang/qkdnet-sdn-ext.yang
	sed -e 's#by [^ ]*/\(github\.com/openconfig/ygot@\)#by \1#' gen/go/etsi015/etsi015.go.tmp > gen/go/etsi015/etsi015.go
	rm gen/go/etsi015/etsi015.go.tmp
	$(GO) fmt ./gen/go/etsi015/ >/dev/null

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

## bench-controller: controller failover over real processes (leader SIGKILL until the next change is committed and pushed),
## path + configuration computation on a 1,000-node network, and one change pushed to each of 100 agents
bench-controller:
	$(GO) test -run XXX -bench Failover -benchtime 20x ./e2e/
	$(GO) test -run XXX -bench 'OpenApp1000|Path1000' -benchtime 200x ./controller/state/
	$(GO) test -run XXX -bench Push100 -benchtime 20x ./controller/

## fuzz: run every fuzz target for FUZZTIME each (default 20s); `make test` runs their seed corpora
FUZZTIME ?= 20s
fuzz:
	GO=$(GO) scripts/fuzz.sh FuzzKeyRequestDecode ./agent/gateway $(FUZZTIME)
	GO=$(GO) scripts/fuzz.sh FuzzParse ./qkd015 $(FUZZTIME)
	GO=$(GO) scripts/fuzz.sh FuzzParseTopology ./testbed $(FUZZTIME)
	GO=$(GO) scripts/fuzz.sh FuzzKeyID ./kmm/keystore $(FUZZTIME)
	GO=$(GO) scripts/fuzz.sh Fuzz004 ./kmm $(FUZZTIME)
	GO=$(GO) scripts/fuzz.sh FuzzPeerMessages ./kmm $(FUZZTIME)
	GO=$(GO) scripts/fuzz.sh FuzzGNMI ./controller/gnmiserver $(FUZZTIME)

## image: build the container image (needs Docker with BuildKit); IMAGE names it
IMAGE ?= qkdnet:dev
image:
	docker build -f deploy/Dockerfile -t $(IMAGE) .

## image-check: without Docker, lint deploy/Dockerfile and build its binaries the same way to check they are static
image-check:
	$(GO) test -count=1 ./deploy/image/

## k8s-manifests: re-render the Helm chart (deploy/helm/qkdnet) into deploy/k8s; `make test` fails while they are stale
k8s-manifests:
	$(GO) test -count=1 -run TestRendersFresh ./deploy/chart/ -update
