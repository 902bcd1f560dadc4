//! A throwaway Exim (unpacked beside Postfix by scripts/test): its own configuration, spool and
//! logs under a temporary directory, `exim4 -C FILE -bdf` (in the foreground, so the test owns the process and stops it) on a loopback port.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postfix::free_port;

pub struct Exim {
    pub dir: tempfile::TempDir,
    pub smtp_port: u16,
    child: Option<Child>,
}

impl Exim {
    /// Starts Exim accepting mail for mx.example.net and handing it to `transport` (the body
    /// of a transport definition).
    pub fn start(transport: &str) -> Exim {
        Exim::start_with(|_, _| {
            format!(
                "domainlist local_domains = mx.example.net
acl_smtp_rcpt = acl_check_rcpt
tls_advertise_hosts =

begin acl
acl_check_rcpt:
  accept domains = +local_domains
  deny message = relay not permitted

begin routers
to_atsms:
  driver = accept
  domains = +local_domains
  transport = atsms

begin transports
atsms:
{transport}

begin retry
* * F,2h,1m
"
            )
        })
    }

    /// Starts Exim with the main-section basics (host name, users, spool, logs, the SMTP port
    /// on loopback) and then `rest(root, port)`: the rest of its configuration.
    pub fn start_with(rest: impl FnOnce(&Path, u16) -> String) -> Exim {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the Exim integration tests need root (CI runs as root)"
        );
        assert!(
            Path::new("/usr/sbin/exim4").exists(),
            "Exim is not unpacked: run scripts/test"
        );
        let dir = tempfile::Builder::new()
            .prefix("atsms-exim-")
            .tempdir()
            .unwrap();
        let root = dir.path();
        std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        for sub in ["spool", "log"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
            std::os::unix::fs::chown(root.join(sub), Some(65534), Some(65534)).unwrap();
        }
        let smtp_port = free_port();
        let r = root.display();
        let config = format!(
            "primary_hostname = exim.test
exim_user = nobody
exim_group = nogroup
never_users =
spool_directory = {r}/spool
log_file_path = {r}/log/%slog
daemon_smtp_ports = {smtp_port}
local_interfaces = 127.0.0.1
{}",
            rest(root, smtp_port)
        );
        let config_path = root.join("exim.conf");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("/usr/sbin/exim4")
            .arg("-C")
            .arg(&config_path)
            .args(["-bdf", "-q1m"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("exim4");
        let exim = Exim {
            dir,
            smtp_port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", smtp_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Exim did not start:\n{}\n{}",
                exim.log("main"),
                exim.log("panic")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        exim
    }

    /// `exim -bt ADDRESS`: how this configuration routes an address (for failure messages).
    pub fn route_test(&self, address: &str) -> String {
        let out = Command::new("/usr/sbin/exim4")
            .arg("-C")
            .arg(self.dir.path().join("exim.conf"))
            .args(["-bt", address])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `exim -qff -v`: a verbose queue run (for failure messages).
    pub fn run_queue(&self) -> String {
        let out = Command::new("/usr/sbin/exim4")
            .arg("-C")
            .arg(self.dir.path().join("exim.conf"))
            .args(["-qff", "-v"])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    pub fn log(&self, which: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("log/{which}log"))).unwrap_or_default()
    }

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
        crate::swaks(self.dir.path(), self.smtp_port, from, to, message, options)
    }
}

/// Processes whose command line names `needle` (an Exim of ours, by its config path).
pub fn processes_naming(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

impl Exim {
    /// Stops Exim and checks that none of its processes is left behind.
    pub fn stop(mut self) {
        let config = self.dir.path().join("exim.conf").display().to_string();
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !processes_naming(&config).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            processes_naming(&config),
            Vec::<u32>::new(),
            "Exim processes left behind"
        );
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Exim {
    fn drop(&mut self) {
        self.kill();
    }
}
