"""LMTP load: atsms-milter and Dovecot side by side (called by bench/lmtp.sh).

Both servers deliver into Maildirs on the same disk with their default durability: Dovecot
fsyncs the file, the new/ directory and its uidlist (mail_fsync = optimized); atsms-milter
fdatasyncs the file and fsyncs new/ (group-committed). The messages are smtp-source's unsigned
test messages: this measures delivery, not verification. CPU per delivery is the machine's busy
time during the run (/proc/stat) less smtp-source's own CPU, so kernel work for fsyncs counts
for both; with --recipients, the server's own processes' CPU (/proc/PID/stat of the server and
its descendants) is printed beside it, which leaves out interrupts, idle exits and whatever
else the machine ran. fsyncs per delivery come from a separate, shorter run under strace -f -c.
"""

import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# --tmpfs: both servers' Maildirs (and everything else) in /dev/shm, so fsyncs cost nothing and
# the figures show CPU alone.
TMPFS = "--tmpfs" in sys.argv
WORK = "/dev/shm/atsms-bench-lmtp" if TMPFS else os.path.join(ROOT, "target", "bench-lmtp")
HZ = os.sysconf("SC_CLK_TCK")
NUMBERS = [a for a in sys.argv[1:] if a.isdigit()]
MESSAGES = int(NUMBERS[0]) if NUMBERS else 2000
# --recipients: 1, 10 and 100 recipients per message (smtp-source -r), 4 KiB, one session.
RECIPIENTS = "--recipients" in sys.argv
# smtp-source -r N sends to 1bench@bench.test … Nbench@bench.test: both servers know them all.
USERS = [f"{i}bench@bench.test" for i in range(1, 101)] + ["bench@bench.test"]


def busy_seconds():
    fields = open("/proc/stat").readline().split()[1:]
    user, nice, system, idle, iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / HZ


def own_seconds(pid):
    """CPU seconds of the server's own processes: the process, its running descendants, and
    the children they reaped (utime, stime, cutime, cstime of /proc/PID/stat)."""
    total = 0
    for p in descendants(pid):
        try:
            stat = open(f"/proc/{p}/stat").read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15])
    return total / HZ


def wait_for(path, timeout=20):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > deadline:
            raise SystemExit(f"no socket at {path}")
        time.sleep(0.05)


def count_delivered(maildir_root):
    n = 0
    for dirpath, _, files in os.walk(maildir_root):
        if os.path.basename(dirpath) == "new":
            n += len(files)
    return n


def smtp_source(socket, sessions, messages, size, recipients=1):
    """Runs smtp-source and returns its CPU seconds."""
    cmd = ["smtp-source", "-L", "-d", "-s", str(sessions), "-m", str(messages), "-l", str(size),
           "-r", str(recipients), "-f", "sender@bench.test", "-t", "bench@bench.test",
           f"unix:{socket}"]
    start = os.times()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    end = os.times()
    return (end.children_user - start.children_user) + (end.children_system - start.children_system)


class Dovecot:
    name = "dovecot"

    def __init__(self):
        self.dir = os.path.join(WORK, "dovecot")
        os.makedirs(os.path.join(self.dir, "run"))
        os.makedirs(os.path.join(self.dir, "state"))
        self.mail = os.path.join(self.dir, "mail")
        os.makedirs(self.mail)
        shutil.chown(self.mail, "nobody", "nogroup")
        d = self.dir
        with open(os.path.join(d, "dovecot.conf"), "w") as f:
            f.write(f"""base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
default_internal_user = nobody
default_internal_group = nogroup
default_login_user = nobody
first_valid_uid = 1
mail_location = maildir:{self.mail}/%d/%n/Maildir
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/users
}}
passdb {{
  driver = passwd-file
  args = username_format=%u {d}/users
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
}}
""")
        with open(os.path.join(d, "users"), "w") as f:
            for user in USERS:
                name = user.split("@")[0]
                f.write(f"{user}::65534:65534::{self.mail}/bench.test/{name}\n")
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", os.path.join(d, "dovecot.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.socket = os.path.join(d, "run", "lmtp")
        wait_for(self.socket)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Atsms:
    name = "atsms-milter"

    def __init__(self):
        self.dir = os.path.join(WORK, "atsms")
        os.makedirs(self.dir)
        self.mail = os.path.join(self.dir, "mail")
        self.socket = os.path.join(self.dir, "lmtp.sock")
        config = os.path.join(self.dir, "atsms.toml")
        with open(config, "w") as f:
            f.write(f"""[lmtp]
listen = "unix:{self.socket}"
socket_mode = "0666"
maildir = "{self.mail}/%d/%n/Maildir"

[policy]
authserv_id = "bench.test"

[control]
socket = "{self.dir}/control.sock"
""")
        self.log = open(os.path.join(self.dir, "atsms.log"), "w")
        binary = os.path.join(ROOT, "target", "release", "atsms-milter")
        self.proc = subprocess.Popen([binary, "serve", "--config", config], stdout=subprocess.DEVNULL, stderr=self.log)
        wait_for(self.socket)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def descendants(pid):
    """The process and all its running descendants (Dovecot's lmtp workers already exist)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(p)], capture_output=True, text=True).stdout.split()
        todo.extend(int(c) for c in children)
    return found


def fsyncs_per_delivery(server, sessions, size, messages=300, recipients=1):
    out = os.path.join(WORK, f"strace-{server.name}.txt")
    pids = []
    for pid in descendants(server.proc.pid):
        pids += ["-p", str(pid)]
    tracer = subprocess.Popen(["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", out] + pids,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    smtp_source(server.socket, sessions, messages, size, recipients)
    time.sleep(0.3)
    tracer.terminate()
    tracer.wait()
    calls = 0
    for line in open(out):
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)\s*$", line)
        if m:
            calls += int(m.group(1))
    return calls / messages


def files_and_inodes(maildir_root):
    """Files in every new/ and the distinct inodes behind them."""
    files, inodes = 0, set()
    for dirpath, _, names in os.walk(maildir_root):
        if os.path.basename(dirpath) == "new":
            for name in names:
                files += 1
                inodes.add(os.stat(os.path.join(dirpath, name)).st_ino)
    return files, len(inodes)


def main_recipients():
    """1, 10 and 100 recipients per message, one session, 4 KiB: messages/s, copies/s, CPU
    and fsyncs per message, and how many files were written (distinct inodes)."""
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    servers = [Atsms()]
    rows, results = [], {}
    try:
        servers.append(Dovecot())
        for recipients in (1, 10, 100):
            messages = max(MESSAGES // recipients, 50)
            for server in servers:
                shutil.rmtree(server.mail, ignore_errors=True)
                os.makedirs(server.mail, exist_ok=True)
                if server.name == "dovecot":
                    shutil.chown(server.mail, "nobody", "nogroup")
                busy0, own0, t0 = busy_seconds(), own_seconds(server.proc.pid), time.time()
                client_cpu = smtp_source(server.socket, 1, messages, 4096, recipients)
                elapsed, busy = time.time() - t0, busy_seconds() - busy0
                own = (own_seconds(server.proc.pid) - own0) / messages * 1e6
                files, inodes = files_and_inodes(server.mail)
                if files != messages * recipients:
                    raise SystemExit(f"{server.name}: {files} of {messages * recipients} copies arrived")
                rate = messages / elapsed
                cpu = max(busy - client_cpu, 0.0) / messages * 1e6
                fsyncs = fsyncs_per_delivery(server, 1, 4096, max(messages // 4, 20), recipients)
                results[(recipients, server.name)] = (rate, cpu)
                rows.append(f"| {recipients} | {server.name} | {rate:.0f} | {rate * recipients:.0f} | {cpu:.0f} | {own:.0f} | {fsyncs:.1f} | {inodes / messages:.2f} | {files} |")
    finally:
        for server in servers:
            server.stop()
    print("| recipients | program | messages/s | copies/s | CPU µs / message (machine) | CPU µs / message (server's processes) | fsyncs / message | files written / message | copies arrived |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n| recipients | messages/s atsms/dovecot | CPU per message atsms/dovecot |")
    print("|---|---|---|")
    for recipients in (1, 10, 100):
        ours, theirs = results[(recipients, "atsms-milter")], results[(recipients, "dovecot")]
        print(f"| {recipients} | {ours[0] / theirs[0]:.2f}x | {ours[1] / theirs[1]:.2f}x |")


def main():
    if RECIPIENTS:
        return main_recipients()
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    servers = [Atsms(), Dovecot()]
    rows, results = [], {}
    try:
        for size in (4096, 65536):
            for sessions in (1, 16):
                for server in servers:
                    shutil.rmtree(server.mail, ignore_errors=True)
                    os.makedirs(server.mail, exist_ok=True)
                    if server.name == "dovecot":
                        shutil.chown(server.mail, "nobody", "nogroup")
                    before_delivered = 0
                    busy0, t0 = busy_seconds(), time.time()
                    client_cpu = smtp_source(server.socket, sessions, MESSAGES, size)
                    elapsed, busy = time.time() - t0, busy_seconds() - busy0
                    delivered = count_delivered(server.mail) - before_delivered
                    if delivered != MESSAGES:
                        raise SystemExit(f"{server.name}: {delivered} of {MESSAGES} messages arrived")
                    rate = MESSAGES / elapsed
                    cpu = max(busy - client_cpu, 0.0) / MESSAGES * 1e6
                    fsyncs = fsyncs_per_delivery(server, sessions, size)
                    results[(size, sessions, server.name)] = (rate, cpu)
                    rows.append(f"| {size // 1024} KiB | {sessions} | {server.name} | {rate:.0f} | {cpu:.0f} | {fsyncs:.2f} | {delivered} |")
    finally:
        for server in servers:
            server.stop()
    print("| size | sessions | program | deliveries/s | CPU µs / delivery | fsyncs / delivery | arrived |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n| size | sessions | deliveries/s atsms/dovecot | CPU per delivery atsms/dovecot |")
    print("|---|---|---|---|")
    for size in (4096, 65536):
        for sessions in (1, 16):
            ours, theirs = results[(size, sessions, "atsms-milter")], results[(size, sessions, "dovecot")]
            print(f"| {size // 1024} KiB | {sessions} | {ours[0] / theirs[0]:.2f}x | {ours[1] / theirs[1]:.2f}x |")


if __name__ == "__main__":
    main()
