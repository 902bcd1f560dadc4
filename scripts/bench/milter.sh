#!/usr/bin/env bash
# Milter load, atsms-milter against OpenDKIM in the same run (load/src/bin/milter_load.rs).
# Installs OpenDKIM if missing. Run as root (OpenDKIM drops to its own user).
# Usage: scripts/bench/milter.sh [--sizes 4096,65536,1048576] [--concurrency 1,16,128] [--messages 3000]
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v opendkim >/dev/null 2>&1 || ! command -v opendkim-genkey >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends opendkim opendkim-tools >/dev/null
fi
ulimit -n 8192
exec scripts/bench/load.sh milter_load "$@"
