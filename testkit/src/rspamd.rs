//! A throwaway rspamd 3.4 (the Debian package's rules and modules, run as a test instance):
//! its own local configuration, database, run and log directories under a temporary
//! directory (`--var LOCAL_CONFDIR=… DBDIR=… RUNDIR=… LOGDIR=…`), workers on loopback ports,
//! hyperscan off (its first compile takes minutes on two cores), DNS from a loopback server
//! that knows nothing. Stopped with its whole process group.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::dns::DnsServer;
use crate::postfix::free_port;

pub struct Rspamd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The normal worker (what rspamc and MTAs talk to).
    pub port: u16,
    _dns: DnsServer,
}

impl Rspamd {
    /// Starts rspamd with `files` (path under LOCAL_CONFDIR, content) added to its local
    /// configuration.
    pub fn start(files: &[(&str, String)]) -> Rspamd {
        assert!(
            Path::new("/usr/bin/rspamd").exists(),
            "rspamd is not installed: run scripts/test"
        );
        let dir = crate::public_tempdir();
        let root = dir.path();
        for sub in ["etc/local.d", "db", "run", "log"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let user = |name: &str| {
            let c = std::ffi::CString::new(name).unwrap();
            let entry = unsafe { libc::getpwnam(c.as_ptr()) };
            assert!(!entry.is_null(), "no user {name}");
            unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
        };
        let (uid, gid) = user("_rspamd");
        for sub in ["db", "run", "log"] {
            std::os::unix::fs::chown(root.join(sub), Some(uid), Some(gid)).unwrap();
        }
        let dns = DnsServer::start(Default::default());
        let (normal, controller, proxy) = (free_port(), free_port(), free_port());
        let r = root.display();
        let mut all: Vec<(String, String)> = vec![
            (
                "local.d/worker-normal.inc".into(),
                format!("bind_socket = \"127.0.0.1:{normal}\";\ncount = 1;\n"),
            ),
            (
                "local.d/worker-controller.inc".into(),
                format!("bind_socket = \"127.0.0.1:{controller}\";\n"),
            ),
            (
                "local.d/worker-proxy.inc".into(),
                format!("bind_socket = \"127.0.0.1:{proxy}\";\n"),
            ),
            (
                "local.d/options.inc".into(),
                format!(
                    "disable_hyperscan = true;\ndns {{ nameserver = [\"{}\"]; timeout = 0.5s; retransmits = 1; }}\n",
                    dns.server_arg()
                ),
            ),
            (
                "local.d/logging.inc".into(),
                format!(
                    "type = \"file\";\nfilename = \"{r}/log/rspamd.log\";\nlevel = \"info\";\n"
                ),
            ),
        ];
        all.extend(files.iter().map(|(p, c)| (p.to_string(), c.clone())));
        for (path, content) in &all {
            let path = root.join("etc").join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        use std::os::unix::process::CommandExt;
        let child = Command::new("/usr/bin/rspamd")
            .args([
                "-f",
                "-c",
                "/etc/rspamd/rspamd.conf",
                "-u",
                "_rspamd",
                "-g",
                "_rspamd",
            ])
            .args(["--var", &format!("LOCAL_CONFDIR={r}/etc")])
            .args(["--var", &format!("DBDIR={r}/db")])
            .args(["--var", &format!("RUNDIR={r}/run")])
            .args(["--var", &format!("LOGDIR={r}/log")])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rspamd");
        let rspamd = Rspamd {
            dir,
            child: Some(child),
            port: normal,
            _dns: dns,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let probe = rspamd.symbols(b"From: a@b.example\nSubject: probe\n\nprobe\n");
            if probe.contains("Action:") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "rspamd did not start:\n{}",
                rspamd.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        rspamd
    }

    /// `rspamc symbols` for `message`: the result as rspamc prints it.
    pub fn symbols(&self, message: &[u8]) -> String {
        use std::io::Write;
        let mut child = Command::new("/usr/bin/rspamc")
            .args(["-h", &format!("127.0.0.1:{}", self.port), "symbols"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rspamc");
        child.stdin.take().unwrap().write_all(message).unwrap();
        let out = child.wait_with_output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/rspamd.log")).unwrap_or_default()
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        // The main process and its workers: the whole group, asked first, then made to.
        if let Some(child) = self.child.take() {
            let group = child.id() as i32;
            unsafe { libc::kill(-group, libc::SIGTERM) };
            crate::reap(child, Duration::from_secs(10));
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
    }
}
