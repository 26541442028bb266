#!/usr/bin/env bash
# Start a 3-node NATS JetStream cluster on 127.0.0.1 from deploy/nats/cluster.conf (the file
# docker-compose.yml ships), print each aiimg role's credentials, and stop it on Ctrl-C.
# The fault-injection tests use the same code (deploy/cluster.py, LoopbackCluster).
#
#   bash deploy/cluster.sh [--dir DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  for cand in "$here/../.venv/bin/python" "$here/../.venv-test/bin/python" python3; do
    if command -v "$cand" >/dev/null 2>&1; then py="$cand"; break; fi
  done
fi
exec "$py" "$here/cluster.py" "$@"
