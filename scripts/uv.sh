#!/usr/bin/env bash
# Run uv, installing it with pip first on a machine that does not have it.
set -euo pipefail
if ! command -v uv >/dev/null 2>&1; then
    echo "uv not found; installing it with pip" >&2
    python3 -m pip install --quiet uv >&2
    PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
fi
exec uv "$@"
