"""Plots the soak's samples (target/bench-soak/soak.csv) into docs/performance/soak.png:
RSS, open files, end-of-message p50/p99 and cached documents against time, one panel each."""

import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
source = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "bench-soak", "soak.csv")
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "docs", "performance", "soak.png")

with open(source) as f:
    header = f.readline().lstrip("# ").strip()
    rows = list(csv.DictReader(f))
t = [float(r["seconds"]) for r in rows]
series = lambda name: [float(r[name]) for r in rows]  # noqa: E731

fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
(a, b), (c, d) = axes
a.plot(t, series("rss_mib"), color="tab:blue")
a.set_ylabel("RSS (MiB)")
b.plot(t, series("open_files"), color="tab:green")
b.set_ylabel("open files")
c.plot(t, series("p50_ms"), label="p50")
c.plot(t, series("p99_ms"), label="p99")
c.set_ylabel("end-of-message latency (ms)")
c.legend()
d.plot(t, series("cache_entries"), color="tab:purple")
d.set_ylabel("cached documents")
for ax in axes.flat:
    ax.set_ylim(0, max(ax.get_ylim()[1], 1) * 1.1)
for ax in (c, d):
    ax.set_xlabel("seconds into the soak")
for ax in axes.flat:
    ax.grid(alpha=0.3)
fig.suptitle("atsms-milter soak: " + header, fontsize=9)
fig.tight_layout()
os.makedirs(os.path.dirname(out), exist_ok=True)
fig.savefig(out, dpi=90)
print(out)
