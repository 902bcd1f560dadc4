#!/usr/bin/env bash
# Signed mail through a throwaway Postfix with and without the milter (load/src/bin/postfix_e2e.rs).
# Installs Postfix if missing. Run as root.
# Usage: scripts/bench/postfix-e2e.sh [--messages 2000] [--connections 1,16] [--size 4096] [--tcp]
#   --tcp: milters (OpenDKIM, atsms-milter) and LMTP (atsms-milter, Dovecot) over loopback TCP,
#          side by side; installs OpenDKIM and Dovecot's LMTP if missing
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x /usr/sbin/postfix ]; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null
fi
if [[ " $* " == *" --tcp "* ]]; then
  missing=()
  command -v opendkim >/dev/null 2>&1 || missing+=(opendkim opendkim-tools)
  [ -x /usr/lib/dovecot/lmtp ] || missing+=(dovecot-core dovecot-lmtpd)
  if [ "${#missing[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
ulimit -n 8192
exec scripts/bench/load.sh postfix_e2e "$@"
