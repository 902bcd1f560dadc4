//! A throwaway Postfix for tests: its own configuration, queue and data directories under a
//! temporary directory, loopback ports only, chroot off, `postfix -c DIR start-fg`. Never the
//! system instance. Needs root (Postfix's master runs as root) and the Debian package.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postfix {
    pub dir: tempfile::TempDir,
    pub smtp_port: u16,
    child: Option<Child>,
}

/// A free loopback port for a server a test is about to start (bound, then released for the
/// server to take). Between the release and the server's bind the port must not go to anyone
/// else, so it is taken below the kernel's ephemeral range (`ip_local_port_range`), where no
/// `bind(0)` and no outgoing connection of the tests running beside it can land, and never the
/// same twice in one test process. (A port from `bind(0)` could be handed to another test's
/// `bind(0)` in that window: the server then failed to start while its port answered for the
/// other one.) Where the ephemeral range starts too low to leave room, `bind(0)` as before.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    if ephemeral_low >= 16384 {
        let span = ephemeral_low - 10000;
        // Each test process starts elsewhere in the span (processes can overlap in a suite).
        let start = std::process::id() * 97 % span;
        for _ in 0..span {
            let port = 10000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
                drop(listener);
                return port as u16;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn must(status: std::io::Result<std::process::ExitStatus>, what: &str) {
    let status = status.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(status.success(), "{what}: {status}");
}

const MASTER_CF: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

impl Postfix {
    /// Starts Postfix accepting mail for `mailboxes` at mx.example.net (delivered into
    /// Maildirs by virtual(8)), with `extra` appended to main.cf (smtpd_milters, say).
    pub fn start(mailboxes: &[&str], extra: &str) -> Postfix {
        Postfix::start_with_services(mailboxes, extra, "")
    }

    /// As `start`, with `services` appended to master.cf (a submission service, a cleanup
    /// of its own: chroot off, loopback ports, as `master_cf_for_test` writes them).
    pub fn start_with_services(mailboxes: &[&str], extra: &str, services: &str) -> Postfix {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the Postfix integration tests run a real Postfix and need root (CI runs as root)"
        );
        assert!(
            Path::new("/usr/sbin/postfix").exists(),
            "Postfix is not installed: run scripts/test"
        );
        let dir = tempfile::Builder::new()
            .prefix("atsms-postfix-")
            .tempdir()
            .unwrap();
        let root = dir.path();
        for sub in ["etc", "queue", "data", "mail"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        // The temp dir must be reachable by the unprivileged Postfix processes.
        std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let smtp_port = free_port();
        let map: String = mailboxes
            .iter()
            .map(|m| format!("{m}@mx.example.net {m}/Maildir/\n"))
            .collect();
        std::fs::write(root.join("etc/vmailbox"), map).unwrap();
        let r = root.display();
        let main_cf = format!(
            "compatibility_level = 3.6
config_directory = {r}/etc
queue_directory = {r}/queue
data_directory = {r}/data
maillog_file = {r}/maillog
maillog_file_prefixes = {r}
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = mx.test
mydomain = test
myorigin = mx.test
mydestination =
mynetworks = 127.0.0.0/8
relayhost =
alias_maps =
alias_database =
smtputf8_enable = yes
biff = no
virtual_mailbox_domains = mx.example.net
virtual_mailbox_maps = texthash:{r}/etc/vmailbox
virtual_mailbox_base = {r}/mail
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
milter_default_action = tempfail
{extra}
"
        );
        // A setting in `extra` replaces the default (Postfix would warn about the override).
        let overridden: Vec<&str> = extra
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
            .collect();
        let main_cf: String = main_cf
            .lines()
            .enumerate()
            .filter(|(i, l)| {
                *i >= main_cf.lines().count() - extra.lines().count() - 1
                    || !l
                        .split_once('=')
                        .is_some_and(|(k, _)| overridden.contains(&k.trim()))
            })
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        std::fs::write(root.join("etc/main.cf"), main_cf).unwrap();
        let master = format!("127.0.0.1:{smtp_port} inet n - n - - smtpd\n{MASTER_CF}{services}");
        std::fs::write(root.join("etc/master.cf"), master).unwrap();
        // Postfix programs wait while main.cf is less than a second old: date it back.
        for file in ["etc/main.cf", "etc/master.cf"] {
            std::fs::File::options()
                .write(true)
                .open(root.join(file))
                .unwrap()
                .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
                .unwrap();
        }
        let nobody =
            |path: &Path| std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
        nobody(&root.join("mail"));
        let postfix_uid = uid_of("postfix");
        std::os::unix::fs::chown(root.join("data"), Some(postfix_uid), None).unwrap();
        let etc = format!("{r}/etc");
        must(
            Command::new("/usr/sbin/postfix")
                .args(["-c", &etc, "set-permissions"])
                .stdout(Stdio::null())
                .status(),
            "postfix set-permissions",
        );
        let child = Command::new("/usr/sbin/postfix")
            .args(["-c", &etc, "start-fg"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postfix start-fg");
        let postfix = Postfix {
            dir,
            smtp_port,
            child: Some(child),
        };
        postfix.wait_for_smtp();
        postfix
    }

    fn wait_for_smtp(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.smtp_port)) {
                let mut reader = BufReader::new(stream);
                let mut banner = String::new();
                if reader.read_line(&mut banner).is_ok() && banner.starts_with("220") {
                    let _ = reader.get_mut().write_all(b"QUIT\r\n");
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("Postfix did not start; maillog:\n{}", self.maillog());
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.root().join("maillog")).unwrap_or_default()
    }

    pub fn new_dir(&self, mailbox: &str) -> PathBuf {
        self.root().join("mail").join(mailbox).join("Maildir/new")
    }

    /// Waits until `count` messages are in the mailbox's `new/`; returns their contents.
    pub fn wait_for_mail(&self, mailbox: &str, count: usize) -> Vec<Vec<u8>> {
        self.wait_for_files(&self.new_dir(mailbox), count)
    }

    /// Waits until `count` files are in `dir` (a `new/`); returns their contents in delivery
    /// order.
    pub fn wait_for_files(&self, dir: &Path, count: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map(|d| d.map(|e| e.unwrap().path()).collect())
                .unwrap_or_default();
            if files.len() >= count {
                files.sort_by_key(|f| {
                    crate::lmtp::delivery_order(
                        &f.file_name().unwrap_or_default().to_string_lossy(),
                    )
                });
                return files.iter().map(|f| std::fs::read(f).unwrap()).collect();
            }
            assert!(
                Instant::now() < deadline,
                "no delivery to {}; maillog:\n{}",
                dir.display(),
                self.maillog()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `message` with swaks (a real SMTP client); returns its transcript and success.
    pub fn swaks(&self, from: &str, to: &str, message: &[u8]) -> (String, bool) {
        self.swaks_with(from, to, message, &[])
    }

    /// As `swaks`, with more swaks options (`--auth …`, `--local-interface 127.0.0.2`).
    pub fn swaks_with(
        &self,
        from: &str,
        to: &str,
        message: &[u8],
        options: &[&str],
    ) -> (String, bool) {
        crate::swaks(self.root(), self.smtp_port, from, to, message, options)
    }
}

/// master.cf lines as an admin writes them, for a throwaway instance: chroot off (the
/// instance's directories are not set up for it), and an `inet` service named `submission`
/// listening on 127.0.0.1:`port` instead.
pub fn master_cf_for_test(text: &str, port: u16) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with(|c: char| c.is_whitespace() || c == '#') || fields.len() < 8 {
            out.push_str(line);
        } else {
            let name = match (fields[0], fields[1]) {
                ("submission", "inet") => format!("127.0.0.1:{port}"),
                (name, _) => name.to_string(),
            };
            out.push_str(&format!(
                "{name} {} {} {} n {}",
                fields[1],
                fields[2],
                fields[3],
                fields[5..].join(" ")
            ));
        }
        out.push('\n');
    }
    out
}

fn uid_of(user: &str) -> u32 {
    let name = std::ffi::CString::new(user).unwrap();
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!entry.is_null(), "no user {user}");
    unsafe { (*entry).pw_uid }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let etc = self.root().join("etc");
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&etc)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(child) = self.child.take() {
            crate::reap(child, Duration::from_secs(10));
        }
    }
}
