//! The Debian package as an admin gets it: built by scripts/test (`cargo deb`), installed here
//! with dpkg, checked, run, purged.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn package() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|_| {
            panic!(
                "no {}: build the package with scripts/test (cargo deb)",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    debs.pop()
        .expect("no .deb in target/debian: run scripts/test")
}

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(path: &str) -> (u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (meta.permissions().mode() & 0o7777, meta.uid())
}

#[test]
fn install_check_run_and_purge_the_debian_package() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "installing a package needs root (CI runs as root)"
    );
    let deb = package();
    let fields = run(Command::new("dpkg-deb").arg("--field").arg(&deb));
    assert!(fields.contains("Package: atsms-milter"), "{fields}");
    assert!(fields.contains("Depends: adduser"), "{fields}");
    assert!(fields.contains("Section: mail"), "{fields}");

    run(Command::new("dpkg").arg("-i").arg(&deb));
    assert_eq!(mode("/usr/sbin/atsms-milter"), (0o755, 0));
    assert_eq!(mode("/etc/atsms-milter/atsms-milter.toml"), (0o644, 0));
    assert_eq!(mode("/lib/systemd/system/atsms-milter.service"), (0o644, 0));
    let man8 = [
        "/usr/share/man/man8/atsms-milter.8.gz",
        "/usr/share/man/man8/atsms-milter.8",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    let man5 = [
        "/usr/share/man/man5/atsms-milter.toml.5.gz",
        "/usr/share/man/man5/atsms-milter.toml.5",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    assert!(man8.is_some() && man5.is_some(), "manual pages installed");
    let conffiles =
        run(Command::new("dpkg-query").args(["--control-show", "atsms-milter", "conffiles"]));
    assert!(
        conffiles.contains("/etc/atsms-milter/atsms-milter.toml"),
        "{conffiles}"
    );

    // The system user and group.
    let passwd = run(Command::new("getent").args(["passwd", "atsms-milter"]));
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "a system user: {passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin");
    run(Command::new("getent").args(["group", "atsms-milter"]));

    // The unit's hardening.
    let unit = std::fs::read_to_string("/lib/systemd/system/atsms-milter.service").unwrap();
    for directive in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RuntimeDirectory=atsms-milter",
        "User=atsms-milter",
    ] {
        assert!(unit.contains(directive), "{directive}");
    }

    // The installed sample is valid and means the defaults.
    let effective = run(Command::new("/usr/sbin/atsms-milter").arg("check-config"));
    assert!(
        effective.contains("listen = \"inet:127.0.0.1:8898\""),
        "{effective}"
    );
    assert!(
        effective.contains("on_temperror = \"tempfail\""),
        "{effective}"
    );
    let help = run(Command::new("/usr/sbin/atsms-milter").arg("--help"));
    assert!(help.contains("serve"));

    run(Command::new("dpkg").args(["--purge", "atsms-milter"]));
    for gone in [
        "/usr/sbin/atsms-milter",
        "/etc/atsms-milter/atsms-milter.toml",
        "/etc/atsms-milter",
        "/lib/systemd/system/atsms-milter.service",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} remains after purge");
    }
}
