#!/usr/bin/env bash
# The long run (load/src/bin/soak.rs): 1 000 000 messages from 50 000 DIDs through the milter at half
# the maximum measured in the same run, 1% forgeries, 1% unknown DIDs, a PLC directory failing
# 5% of requests; samples every 10 s into target/bench-soak/soak.csv, plotted into
# docs/performance/soak.png (matplotlib, installed with pip if missing).
# Usage: scripts/bench/soak.sh [--messages N] [--dids N] [--max N] [--rate N] [--cache-mib N] [--png FILE]
set -euo pipefail
cd "$(dirname "$0")/../.."
png=docs/performance/soak.png
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --png) png=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install --quiet matplotlib
ulimit -n 8192
csv=$(scripts/bench/load.sh soak "${args[@]}" | tail -1)
python3 scripts/bench/soak_plot.py "$csv" "$png"
cp "$csv" "${png%.png}.csv"
