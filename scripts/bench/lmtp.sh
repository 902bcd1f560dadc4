#!/usr/bin/env bash
# LMTP delivery, atsms-milter against Dovecot's LMTP in the same run: Postfix's smtp-source -L
# against each (unix sockets, Maildir, full durability), 1 and 16 sessions, 4 and 64 KiB.
# Installs Dovecot, Postfix (smtp-source) and strace if missing. Run as root.
# Usage: scripts/bench/lmtp.sh [messages per run, default 2000] [--tmpfs] [--recipients]
#   --recipients: 1, 10 and 100 recipients per message instead (messages / recipients each)
#   --tmpfs: Maildirs in /dev/shm, to separate CPU from disk
set -euo pipefail
cd "$(dirname "$0")/../.."
missing=()
[ -x /usr/lib/dovecot/lmtp ] || missing+=(dovecot-core dovecot-lmtpd)
command -v smtp-source >/dev/null 2>&1 || missing+=(postfix)
command -v strace >/dev/null 2>&1 || missing+=(strace)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cargo build --release --locked --quiet
ulimit -n 8192
exec python3 scripts/bench/lmtp_bench.py "$@"
