#!/usr/bin/env bash
# Signed mail through a throwaway Postfix with and without the milter (benches/postfix_e2e.rs).
# Installs Postfix if missing. Run as root.
# Usage: bench/postfix-e2e.sh [--messages 2000] [--connections 1,16] [--size 4096]
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x /usr/sbin/postfix ]; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null
fi
ulimit -n 8192
exec cargo bench --locked --bench postfix_e2e -- "$@"
