//! The real `atsms-milter serve` binary, started with a config file the test writes.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    child: Option<Child>,
    pub config_path: PathBuf,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts the daemon and waits until `wait_port` (a loopback TCP port it listens on)
    /// accepts connections.
    pub fn start(config: &str, wait_port: u16) -> Daemon {
        Daemon::start_limited(config, wait_port, None)
    }

    /// As `start`, with RLIMIT_FSIZE set to `file_size_limit` bytes in the daemon: a stand-in
    /// for a full file system.
    pub fn start_limited(config: &str, wait_port: u16, file_size_limit: Option<u64>) -> Daemon {
        let limits: Vec<_> = file_size_limit
            .map(|l| (libc::RLIMIT_FSIZE, l))
            .into_iter()
            .collect();
        Daemon::start_custom(config, wait_port, &[], &limits)
    }

    /// As `start`, with at most `files` open file descriptors (RLIMIT_NOFILE).
    pub fn start_with_nofile(config: &str, wait_port: u16, files: u64) -> Daemon {
        Daemon::start_custom(config, wait_port, &[], &[(libc::RLIMIT_NOFILE, files)])
    }

    /// As `start`, with extra environment variables.
    pub fn start_with_env(config: &str, wait_port: u16, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_custom(config, wait_port, env, &[])
    }

    fn start_custom(
        config: &str,
        wait_port: u16,
        env: &[(&str, &str)],
        limits: &[(libc::__rlimit_resource_t, u64)],
    ) -> Daemon {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("atsms-milter.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("daemon.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(crate::binary());
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        command.envs(env.iter().copied());
        let limits = limits.to_vec();
        if !limits.is_empty() {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    for &(resource, limit) in &limits {
                        let rlim = libc::rlimit {
                            rlim_cur: limit,
                            rlim_max: limit,
                        };
                        if libc::setrlimit(resource, &rlim) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().unwrap();
        let daemon = Daemon {
            child: Some(child),
            config_path,
            log_path,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", wait_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "daemon did not start:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The log once `done` says it holds what the test waits for, or after ten seconds (the
    /// assertion that follows then fails with the whole log). Lines at `info` reach the log
    /// in batches, at most `atsms_milter::infra::logging::BATCH_WINDOW` after they were logged;
    /// warnings and errors at once. Lines keep their order, so what was logged before a line
    /// waited for is in the log too.
    pub fn log_when(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if done(&log) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// [`Daemon::log_when`] it contains `what`.
    pub fn log_with(&self, what: &str) -> String {
        self.log_when(|log| log.contains(what))
    }

    /// The daemon's peak resident set so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill_dash_9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}
