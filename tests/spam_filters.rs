//! The spam-filter rules in contrib/ with the real filters: rspamd 3.4 (contrib/rspamd: the
//! Lua rule, the `atsms_did` selector in a multimap), SpamAssassin 4.0 (contrib/spamassassin:
//! the AtSms plugin and its rules) and Sieve (contrib/sieve, run by Pigeonhole's `sieve-test`).
//! Each reads messages carrying our `Authentication-Results` field as the verifier writes it
//! for the public vectors: a pass, a fail, one failing and one passing signature, a relay's
//! field claiming a fail, and a labelled sender.
// The kit's futures (testkit/) are laid out across a crate boundary, deeper than the
// default limit of 128.
#![recursion_limit = "256"]

use atsms_testkit as support;

use std::path::Path;
use std::process::Command;

use atsms_milter::format::auth_results::{Property, format_value};
use support::contrib;
use support::vectors::VectorWorld;

const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep";
const OURS: &str = "mx.test";

/// A vector with our field on top (as the MTA adds it), `relay` fields below it.
async fn judged(
    world: &VectorWorld,
    vector: &str,
    properties: &[Property],
    relay: &str,
) -> Vec<u8> {
    let raw = std::fs::read(support::test_data("envelope").join(vector)).unwrap();
    let verdicts = support::signing::verify_at(&world.verifier(), &raw, world.now()).await;
    let verdict = atsms_milter::verification::verify::Verdict {
        signatures: verdicts,
    };
    let value = format_value(OURS, &verdict, properties, "\r\n");
    [
        format!("Authentication-Results:{value}\r\n{relay}").into_bytes(),
        raw,
    ]
    .concat()
}

struct Cases {
    pass: Vec<u8>,
    fail: Vec<u8>,
    pass_and_fail: Vec<u8>,
    relay_claims_fail: Vec<u8>,
    unsigned_relay_claims_fail: Vec<u8>,
    labelled: Vec<u8>,
}

async fn cases(world: &VectorWorld) -> Cases {
    let relay = format!(
        "Authentication-Results: relay.example; atsms=fail reason=\"body hash mismatch\" header.d=\"{ALICE}\"\r\n"
    );
    let unsigned = {
        let verdict = atsms_milter::verification::verify::Verdict { signatures: vec![] };
        format!(
            "Authentication-Results:{}\r\n{relay}From: <carol@example.org>\r\nSubject: unsigned\r\n\r\nhello\r\n",
            format_value(OURS, &verdict, &[], "\r\n")
        )
        .into_bytes()
    };
    Cases {
        pass: judged(world, "k256-multikey-pass.eml", &[], "").await,
        fail: judged(world, "body-tampered-fail.eml", &[], "").await,
        pass_and_fail: judged(world, "two-signatures-pass-fail.eml", &[], "").await,
        relay_claims_fail: judged(world, "k256-multikey-pass.eml", &[], &relay).await,
        unsigned_relay_claims_fail: unsigned,
        labelled: judged(
            world,
            "k256-multikey-pass.eml",
            &[Property::new("atsms-label", "spam")],
            "",
        )
        .await,
    }
}

/// The symbols of an rspamc answer: `NAME[options]`.
fn symbols(answer: &str) -> Vec<String> {
    answer
        .lines()
        .filter_map(|l| l.strip_prefix("Symbol: "))
        .filter(|s| s.starts_with("ATSMS"))
        .map(|s| {
            let name = s.split(' ').next().unwrap();
            let options = s.split_once('[').map(|(_, o)| o.trim_end_matches(']'));
            match options {
                Some(o) => format!("{name}[{o}]"),
                None => name.to_string(),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rspamd_scores_our_results_only_and_knows_the_did() {
    let world = VectorWorld::start();
    let cases = cases(&world).await;
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("atsms_did.map");
    std::fs::write(&map, format!("{ALICE}\n")).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&map, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let multimap = std::fs::read_to_string(contrib("rspamd/multimap.conf"))
        .unwrap()
        .replace(
            "/etc/rspamd/local.d/atsms_did.map",
            &map.display().to_string(),
        );
    let rspamd = support::rspamd::Rspamd::start(&[
        (
            "rspamd.local.lua",
            format!("dofile(\"{}\")\n", contrib("rspamd/atsms.lua").display()),
        ),
        (
            "rspamd.conf.local",
            format!("atsms {{ authserv_id = \"{OURS}\"; }}\n"),
        ),
        ("local.d/multimap.conf", multimap),
    ]);
    let check = |message: &[u8], expected: &[&str]| {
        let answer = rspamd.symbols(message);
        assert_eq!(symbols(&answer), expected, "{answer}");
        answer
    };
    let pass = check(
        &cases.pass,
        &[
            "ATSMS_DID_LISTED[did:plc:ofurdhfyhjhgomvfygxergep]",
            "ATSMS_PASS[did:plc:ofurdhfyhjhgomvfygxergep]",
        ],
    );
    println!("rspamc symbols, a pass:\n{pass}");
    check(
        &cases.fail,
        &["ATSMS_FAIL[did:plc:ofurdhfyhjhgomvfygxergep]"],
    );
    check(
        &cases.pass_and_fail,
        &[
            "ATSMS_DID_LISTED[did:plc:ofurdhfyhjhgomvfygxergep]",
            "ATSMS_PASS[did:plc:ofurdhfyhjhgomvfygxergep]",
        ],
    );
    check(
        &cases.relay_claims_fail,
        &[
            "ATSMS_DID_LISTED[did:plc:ofurdhfyhjhgomvfygxergep]",
            "ATSMS_PASS[did:plc:ofurdhfyhjhgomvfygxergep]",
        ],
    );
    check(&cases.unsigned_relay_claims_fail, &[]);
    check(
        &cases.labelled,
        &[
            "ATSMS_DID_LISTED[did:plc:ofurdhfyhjhgomvfygxergep]",
            "ATSMS_LABEL[spam]",
            "ATSMS_PASS[did:plc:ofurdhfyhjhgomvfygxergep]",
        ],
    );
    // The scores as configured by the rule.
    assert!(pass.contains("Symbol: ATSMS_PASS (-1.00)"), "{pass}");
}

/// SpamAssassin's site configuration: Debian's plugin loads, the contrib plugin and rules.
fn spamassassin_config(dir: &Path) {
    for entry in std::fs::read_dir("/etc/spamassassin").unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "pre") {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    let plugin = contrib("spamassassin/AtSms.pm");
    let rules = std::fs::read_to_string(contrib("spamassassin/atsms.cf"))
        .unwrap()
        .replace(
            "atsms_authserv_id mx.example.net",
            &format!("atsms_authserv_id {OURS}"),
        )
        .replace(" AtSms.pm", &format!(" {}", plugin.display()));
    std::fs::write(dir.join("atsms.cf"), rules).unwrap();
}

/// The rules SpamAssassin says hit (`tests=…` of X-Spam-Status) and its AtSms-DID header.
fn spamassassin(dir: &Path, message: &[u8]) -> (Vec<String>, String) {
    use std::io::Write;
    let mut child = Command::new("spamassassin")
        .args(["-L", "--siteconfigpath"])
        .arg(dir)
        .arg("-p")
        .arg(dir.join("user_prefs"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spamassassin is installed by scripts/test");
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    let head = out.split("\n\n").next().unwrap().replace("\n\t", " ");
    let status = head
        .lines()
        .find(|l| l.starts_with("X-Spam-Status:"))
        .unwrap_or_else(|| panic!("{out}"));
    let tests = status
        .split("tests=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let hits = tests
        .split(',')
        .filter(|t| t.starts_with("ATSMS"))
        .map(str::to_string)
        .collect();
    let did = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Spam-AtSms-DID: "))
        .unwrap_or_default()
        .to_string();
    (hits, did)
}

#[tokio::test]
async fn spamassassin_scores_our_results_only() {
    let world = VectorWorld::start();
    let cases = cases(&world).await;
    let dir = tempfile::tempdir().unwrap();
    spamassassin_config(dir.path());
    let check = |message: &[u8], expected: &[&str], did: &str| {
        let (hits, found) = spamassassin(dir.path(), message);
        assert_eq!(hits, expected);
        assert_eq!(found, did);
    };
    check(&cases.pass, &["ATSMS_PASS"], ALICE);
    check(&cases.fail, &["ATSMS_FAIL"], "none");
    check(&cases.pass_and_fail, &["ATSMS_PASS"], ALICE);
    check(&cases.relay_claims_fail, &["ATSMS_PASS"], ALICE);
    check(&cases.unsigned_relay_claims_fail, &[], "none");
    check(&cases.labelled, &["ATSMS_LABEL_SPAM", "ATSMS_PASS"], ALICE);
}

/// What `sieve-test` would do with `message` under `script`: the folder, or "keep".
fn sieve(dir: &Path, script: &Path, message: &[u8]) -> String {
    let mail = dir.join(format!("m{}.eml", message.len()));
    std::fs::write(&mail, message).unwrap();
    let conf = dir.join("dovecot.conf");
    std::fs::write(
        &conf,
        format!(
            "protocols =\nmail_uid = nobody\nmail_gid = nogroup\nmail_location = maildir:{}/mail\n",
            dir.display()
        ),
    )
    .unwrap();
    let out = Command::new("sieve-test")
        .arg("-c")
        .arg(&conf)
        .arg(script)
        .arg(&mail)
        .output()
        .expect("sieve-test (dovecot-sieve) is installed by scripts/test");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match text
        .lines()
        .find_map(|l| l.trim().strip_prefix("* store message in folder: "))
    {
        // The implicit keep is a store into INBOX.
        Some("INBOX") => "keep".into(),
        Some(folder) => folder.to_string(),
        None => panic!("{text}"),
    }
}

#[tokio::test]
async fn sieve_files_our_failures_into_junk_and_nothing_else() {
    let world = VectorWorld::start();
    let cases = cases(&world).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("atsms.sieve");
    std::fs::write(
        &script,
        std::fs::read_to_string(contrib("sieve/atsms.sieve"))
            .unwrap()
            .replace("mx\\\\.example\\\\.net", "mx\\\\.test"),
    )
    .unwrap();
    assert_eq!(sieve(dir.path(), &script, &cases.fail), "Junk");
    for (name, message) in [
        ("pass", &cases.pass),
        ("pass and fail", &cases.pass_and_fail),
        ("a relay claims fail", &cases.relay_claims_fail),
        (
            "unsigned, a relay claims fail",
            &cases.unsigned_relay_claims_fail,
        ),
    ] {
        assert_eq!(sieve(dir.path(), &script, message), "keep", "{name}");
    }
    // What the contrib rule avoids: the naive rule files genuine mail into Junk.
    let naive = dir.path().join("naive.sieve");
    std::fs::write(
        &naive,
        "require [\"fileinto\"];\nif header :contains \"Authentication-Results\" \"atsms=fail\" { fileinto \"Junk\"; }\n",
    )
    .unwrap();
    assert_eq!(sieve(dir.path(), &naive, &cases.relay_claims_fail), "Junk");
}
