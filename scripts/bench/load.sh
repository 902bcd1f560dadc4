#!/usr/bin/env bash
# Runs one load driver of load/src/bin/ against the release daemon: builds both (release),
# then runs the driver, which finds target/release/atsms-milter beside itself.
# Usage: scripts/bench/load.sh DRIVER [driver arguments]
#   DRIVER: milter_load, signing_load, scanner_load, socketmap_load, xrpc_load, inbox_load,
#           send_load, postfix_e2e, identity_memory, soak (each file's first lines say what it measures)
set -euo pipefail
cd "$(dirname "$0")/../.."
driver=${1:?usage: scripts/bench/load.sh DRIVER [arguments]}
shift
cargo build --release --locked --quiet -p atsms-milter --bin atsms-milter
cargo build --release --locked --quiet -p atsms-load --bin "$driver"
exec target/release/"$driver" "$@"
