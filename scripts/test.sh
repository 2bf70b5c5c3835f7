#!/usr/bin/env bash
# Run the test suite against real PostgreSQL, RabbitMQ and S3 (started by devstack if needed).
# Arguments go to pytest; without a path among them, libs, services and tests are collected.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v uv >/dev/null 2>&1; then
    echo "uv not found; installing it with pip" >&2
    python3 -m pip install --quiet uv
    # pip puts uv beside the interpreter, which a pyenv shim or a fresh PATH may not cover yet.
    PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
    export PATH
fi

uv sync --locked

# The web app's browser tests drive Debian's headless Chromium (Playwright cannot download one).
if ! command -v chromium >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2
fi

# An assignment, not `eval "$(...)"` directly: eval would swallow a failing `devstack infra`.
exports="$(uv run --locked python -m devstack infra)"
eval "$exports"

has_path=false
for arg in "$@"; do
    if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then
        has_path=true
    fi
done
if [[ "$has_path" == false ]]; then
    set -- "$@" libs services tests
fi

status=0
uv run --locked pytest -ra "$@" || status=$?
if [[ "$status" -eq 5 ]]; then
    echo "error: pytest collected no tests; refusing to report success" >&2
    exit 1
fi
exit "$status"
