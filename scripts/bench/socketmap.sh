#!/usr/bin/env bash
# Postfix lookup tables under load: warm atsms_transport lookups against the daemon, beside a
# minimal socketmap echo server, same client, same run (load/src/bin/socketmap_load.rs).
# Usage: scripts/bench/socketmap.sh [--lookups 20000]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec scripts/bench/load.sh socketmap_load "$@"
