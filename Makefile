# The two commands of the README: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TIDINGS_HOST  ?= 127.0.0.1
TIDINGS_PORT  ?= 8000
TIDINGS_STORE ?= sqlite:///tidings.db
export TIDINGS_HOST TIDINGS_PORT TIDINGS_STORE
LINT_PATHS := src tests examples $(wildcard bench)

.PHONY: run test lint typecheck unit venv dev clean bench redis-server chromium nginx assets client console client-test

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tidings needs Python >= 3.11 (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python assets
	$(BIN)/python -m pip install --quiet -e '.[server]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python assets
	$(BIN)/python -m pip install --quiet -e '.[server,redis,amqp,nats,mqtt,postgres,dev]'
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed
dev: $(VENV)/.installed-dev

## make run: create .venv, install tidings, serve on the embedded SQLite store
run: $(VENV)/.installed
	$(BIN)/tidings serve

## make assets: the /docs page's files, Swagger UI at the version web/package-lock.json pins
## (npm ci; --ignore-scripts: no package's install script runs, none phones home), copied
## into the package with our own init script, the JavaScript client (make client) and the
## console (make console); node and npm installed if missing
DOCS_ASSETS := src/tidings/server/assets/docs
DOCS_FILES  := $(addprefix $(DOCS_ASSETS)/,swagger-ui-bundle.js swagger-ui.css favicon-32x32.png LICENSE NOTICE docs-init.js)
assets: $(DOCS_FILES) client console

# npm, installed from Debian when missing; $(1) says what needs it.
define need_npm
	@command -v npm >/dev/null 2>&1 || { \
	  echo "npm is missing: installing the Debian packages nodejs and npm"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm >/dev/null; }
	@command -v npm >/dev/null 2>&1 || { echo "npm could not be installed: $(1) needs node and npm (Debian packages nodejs, npm)" >&2; exit 1; }
endef

$(DOCS_FILES) &: web/package.json web/package-lock.json web/src/docs-init.js
	$(call need_npm,make assets (the /docs page))
	cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	mkdir -p $(DOCS_ASSETS)
	cp web/node_modules/swagger-ui-dist/swagger-ui-bundle.js web/node_modules/swagger-ui-dist/swagger-ui.css \
	  web/node_modules/swagger-ui-dist/favicon-32x32.png web/node_modules/swagger-ui-dist/LICENSE \
	  web/node_modules/swagger-ui-dist/NOTICE web/src/docs-init.js $(DOCS_ASSETS)/
	touch $(DOCS_FILES)

## make client: the JavaScript client (clients/js) compiled by the TypeScript its
## package-lock.json pins (npm ci --ignore-scripts) into one ES module with its types,
## copied into the package, which serves it at /client/tidings.js
CLIENT_ASSETS := src/tidings/server/assets/client
CLIENT_FILES  := $(CLIENT_ASSETS)/tidings.js $(CLIENT_ASSETS)/tidings.d.ts
client: $(CLIENT_FILES)

$(CLIENT_FILES) &: clients/js/package.json clients/js/package-lock.json clients/js/tsconfig.json clients/js/src/tidings.ts
	$(call need_npm,make client (the JavaScript client))
	cd clients/js && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	cd clients/js && node_modules/.bin/tsc -p .
	mkdir -p $(CLIENT_ASSETS)
	cp clients/js/dist/tidings.js clients/js/dist/tidings.d.ts $(CLIENT_ASSETS)/
	touch $(CLIENT_FILES)

## make console: the console (console/: TypeScript, no framework) compiled by the TypeScript
## its package-lock.json pins (npm ci --ignore-scripts) into ES modules, copied into the
## package with its page and stylesheet, which the server serves at /console; its modules
## import the client from /client/tidings.js, whose types it is checked against
CONSOLE_ASSETS  := src/tidings/server/assets/console
CONSOLE_SOURCES := $(wildcard console/src/*.ts)
CONSOLE_FILES   := $(CONSOLE_ASSETS)/index.html $(CONSOLE_ASSETS)/console.css \
  $(patsubst console/src/%.ts,$(CONSOLE_ASSETS)/%.js,$(CONSOLE_SOURCES))
console: $(CONSOLE_FILES)

$(CONSOLE_FILES) &: console/package.json console/package-lock.json console/tsconfig.json \
  console/client/tidings.d.ts $(CONSOLE_SOURCES) console/src/index.html console/src/console.css $(CLIENT_FILES)
	$(call need_npm,make console (the web console))
	cd console && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	rm -rf console/dist
	cd console && node_modules/.bin/tsc -p .
	rm -rf $(CONSOLE_ASSETS)
	mkdir -p $(CONSOLE_ASSETS)
	cp console/dist/*.js console/src/console.css $(CONSOLE_ASSETS)/
	# index.html last: the server reloads the console when it changes (ops.py).
	cp console/src/index.html $(CONSOLE_ASSETS)/
	touch $(CONSOLE_FILES)

## make client-test: the JavaScript client's node suite; it starts its own tidings servers
## (from $(BIN)) on free loopback ports and stops them by PID
CLIENT_TEST = cd clients/js && TIDINGS_BIN=$(abspath $(BIN))/tidings node --test --test-reporter=spec test/*.test.mjs
client-test: $(VENV)/.installed-dev client
	$(CLIENT_TEST)

## redis-server for the tests (each run starts its own on a free port): install if missing
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server is missing: installing the Debian package redis-server"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }
	@command -v redis-server >/dev/null 2>&1 || { echo "redis-server could not be installed: the Redis store tests need it" >&2; exit 1; }

## chromium for the real-browser tests (Playwright drives Debian's build): install if missing
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "chromium is missing: installing the Debian package chromium"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { echo "chromium could not be installed: the browser tests need it" >&2; exit 1; }

## nginx for the test that runs docs/deploy.md's proxy config in front of tidings: install if missing
nginx:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { \
	  echo "nginx is missing: installing the Debian package nginx"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nginx >/dev/null; }
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { echo "nginx could not be installed: the proxy test needs it" >&2; exit 1; }

## make test: dev venv, lint, type check, the whole suite
test: $(VENV)/.installed-dev redis-server chromium nginx
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(CLIENT_TEST)
	$(BIN)/python -m pytest -q -n 4 --dist loadfile

lint: dev
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: dev
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: dev
	$(BIN)/python -m pytest -q tests/unit tests/contract

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

## make bench: tidings vs Nchan, sse-starlette, Starlette, Celery and a hand-written aio-pika
## consumer behind sse-starlette (RabbitMQ bridge), side by side (installs peers)
bench: $(VENV)/.installed-dev
	$(BIN)/python bench/run.py $(BENCH_ARGS)
