#!/usr/bin/env bash
# Installs the headless browser the MLflow UI check uses (tests/integration/test_mlflow_ui_browser.py):
# Debian's `chromium` package (the browser builds that playwright or selenium fetch themselves are a
# download outside the package registries). Without root or apt-get the test skips and says so.
#
# Idempotent and fast when the browser is there.
set -euo pipefail

say() { echo "browser_tools: $*"; }

for browser in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$browser" >/dev/null 2>&1; then
        exit 0
    fi
done
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's chromium"
    # A failed install must not fail the test command: the browser test then skips and says why.
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
        chromium --version
    else
        say "could not install chromium with apt-get; the MLflow UI browser test will skip"
    fi
else
    say "no Chromium and cannot install it here (needs root + apt-get); the MLflow UI browser test will skip"
fi
