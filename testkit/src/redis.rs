//! A throwaway Redis (Debian's redis-server) on a loopback port, no persistence.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postfix::free_port;

pub struct Redis {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
    tls: bool,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(false)
    }

    /// A Redis speaking only TLS, with a certificate for `localhost` from a CA of its own
    /// (`ca_file`).
    pub fn start_tls() -> Redis {
        Redis::start_with(true)
    }

    fn start_with(tls: bool) -> Redis {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        if tls {
            make_certificates(dir.path());
            let d = dir.path().display();
            command.args([
                "--port".to_string(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                format!("{d}/server.crt"),
                "--tls-key-file".into(),
                format!("{d}/server.key"),
                "--tls-ca-cert-file".into(),
                format!("{d}/ca.crt"),
                "--tls-auth-clients".into(),
                "no".into(),
            ]);
        } else {
            command.args(["--port", &port.to_string()]);
        }
        let child = command
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: run scripts/test");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            port,
            child,
            dir,
            tls,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The fleet key every daemon sharing this Redis uses (`store.key_file`, mode 0600).
    pub fn key_file(&self) -> std::path::PathBuf {
        fleet_key_file(self.dir.path())
    }

    /// The `[store]` section of a daemon of the fleet: this Redis and its fleet key.
    pub fn store_toml(&self) -> String {
        format!(
            "[store]\nredis = \"{}\"\nkey_file = \"{}\"\n",
            self.url(),
            self.key_file().display()
        )
    }

    /// The CA certificate a TLS Redis's certificate comes from.
    pub fn ca_file(&self) -> String {
        self.dir.path().join("ca.crt").display().to_string()
    }

    /// `redis-cli ARGS` against this server; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.tls {
            command.args(["--tls", "--cacert", &self.ca_file()]);
        }
        let out = command.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// A fleet key file (`store.key_file`: 32 bytes, mode 0600) in `dir`, made once.
pub fn fleet_key_file(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fleet.key");
    if !path.exists() {
        std::fs::write(&path, [0x5a; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 (openssl), in `dir`.
fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
