#!/usr/bin/env bash
# Signing load, the signing milter against OpenDKIM signing in the same run
# (load/src/bin/signing_load.rs). Installs OpenDKIM if missing. Run as root (OpenDKIM drops to its
# own user).
# Usage: scripts/bench/signing.sh [--sizes 4800] [--concurrency 1,16] [--messages 5000]
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v opendkim >/dev/null 2>&1 || ! command -v opendkim-genkey >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends opendkim opendkim-tools >/dev/null
fi
exec scripts/bench/load.sh signing_load "$@"
