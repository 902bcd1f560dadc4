//! `serve --stdio`: one LMTP session on standard input and output, as Exim's pipe-style
//! `lmtp` transport (`command = …`) runs it, one process per delivery.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn one_session_on_stdin_and_stdout() {
    let root = tempfile::tempdir().unwrap();
    let maildir = root.path().join("mx.example.net/bob/Maildir");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    // Another process's delivery, old or not, is none of this process's business.
    let other = maildir.join("tmp/1795000000.M1P1Q1.other");
    std::fs::write(&other, b"x").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&other)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(48 * 3600))
        .unwrap();
    let config = root.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[lmtp]\nmaildir = \"{}/%d/%n/Maildir\"\n\n[policy]\nauthserv_id = \"mx.test\"\n",
            root.path().display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
        .args(["serve", "--stdio", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let session = b"LHLO exim.test\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@mx.example.net>\r\nDATA\r\nSubject: piped\r\n\r\nvia stdio\r\n.\r\nQUIT\r\n";
    child.stdin.take().unwrap().write_all(session).unwrap();
    let status = child.wait().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("220 "), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("250 2.0.0 <bob@mx.example.net> ") && l.ends_with(" Saved")),
        "{out}"
    );
    assert!(lines.last().unwrap().starts_with("221 "), "{out}");
    let files: Vec<_> = std::fs::read_dir(maildir.join("new")).unwrap().collect();
    assert_eq!(files.len(), 1);
    let stored = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    assert!(
        stored
            .contains("Authentication-Results: mx.test; atsms=none\nSubject: piped\n\nvia stdio\n"),
        "{stored}"
    );
    assert!(other.exists(), "--stdio never cleans tmp/");
}
