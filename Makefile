# Two commands matter: `make run` and `make test`. Both set up everything they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck browser clean bench catalogs messages

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The bot's own texts in every language: bot/locales/<lang>/LC_MESSAGES/edgeqa.po compiled
# to .mo (build output, not in git). Fails on a translation whose placeholders are broken.
catalogs: $(STAMP)
	$(BIN)/python -m bot.catalogs

# After adding or changing a text in the code or the page: collect them all into the
# template (edgeqa.pot) and merge it into every catalog; then translate what is new.
messages: $(STAMP)
	$(BIN)/pybabel --quiet extract -F babel.cfg -o bot/locales/edgeqa.pot \
	  --project=edgeqa --add-comments=TRANSLATORS: --add-location=file --sort-by-file \
	  --width=100 .
	$(BIN)/pybabel --quiet update -i bot/locales/edgeqa.pot -d bot/locales -D edgeqa \
	  --no-fuzzy-matching --ignore-obsolete --width=100

run: $(STAMP) catalogs
	$(BIN)/edgeqa run

# Headless Chromium for the browser-chat test (Debian's package; installed when missing and root).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)); \
	  else echo "chromium is missing: sudo apt-get install chromium" >&2; exit 1; fi; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) catalogs browser lint typecheck
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
