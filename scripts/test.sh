#!/usr/bin/env bash
# The whole test suite, in one command: installs and starts a local Milvus on 127.0.0.1 (see
# scripts/milvus.sh), runs formatting and lint checks and every test, then stops Milvus again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Browser tests need Debian's Chromium and its WebDriver.
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ -z "${STAMPEDE_CHROMIUM:-}" ]; then
  echo "== installing chromium and chromium-driver (apt-get) for the browser tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

started_here=0
if ! scripts/milvus.sh status >/dev/null 2>&1; then
  scripts/milvus.sh start
  started_here=1
fi
stop_milvus() { if [ "$started_here" = 1 ]; then scripts/milvus.sh stop; fi; }
trap stop_milvus EXIT

export STAMPEDE_MILVUS_ADDR=${STAMPEDE_MILVUS_ADDR:-127.0.0.1:19530}

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --no-fail-fast 2>&1 | tee target/test-output.log
