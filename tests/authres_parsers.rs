//! Every `Authentication-Results` value we write, for every vector, read back by the two
//! common independent RFC 8601 parsers: Python's `authres` (python3-authres) and Perl's
//! `Mail::AuthenticationResults` (libmail-authenticationresults-perl), both installed by
//! scripts/test. Method, result, reason and each property must come back exactly.

mod support;

use atsms_milter::auth_results::{Property, format_value};
use atsms_milter::envelope::AuthResult;
use atsms_milter::verify::Verdict;
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};
use support::vectors::VectorWorld;

/// What a parser must read out of the value we wrote for `verdict`.
fn expected(verdict: &Verdict, extra: &[Property]) -> Value {
    if verdict.signatures.is_empty() {
        let properties: Vec<Value> = extra
            .iter()
            .map(|p| json!(["policy", p.name, p.value]))
            .collect();
        return json!([{"method": "atsms", "result": "none", "reason": null, "properties": properties}]);
    }
    let reported = verdict.reported_index();
    let results: Vec<Value> = verdict
        .signatures
        .iter()
        .enumerate()
        .map(|(i, sig)| {
            let mut properties = Vec::new();
            if let Some(passed) = &sig.passed {
                let from = if passed.from.local_is_quoted() {
                    passed.from.domain.to_ascii_lowercase()
                } else {
                    format!("{}@{}", passed.from.local, passed.from.domain.to_ascii_lowercase())
                };
                properties.push(json!(["header", "from", from]));
                if let Some(handle) = &passed.handle {
                    properties.push(json!(["header", "handle", handle]));
                }
                let aligned = if passed.aligned { "yes" } else { "no" };
                properties.push(json!(["policy", "aligned", aligned]));
            }
            if i == reported {
                for p in extra {
                    properties.push(json!(["policy", p.name, p.value]));
                }
            }
            if let Some(did) = &sig.did {
                properties.push(json!(["header", "d", did]));
            }
            let reason = match sig.result {
                AuthResult::Pass => Value::Null,
                _ => json!(sig.reason.as_ref().unwrap().to_string().replace(['"', '\\'], "")),
            };
            json!({"method": "atsms", "result": sig.result.as_str(), "reason": reason, "properties": properties})
        })
        .collect();
    Value::Array(results)
}

/// Runs `program script` over the values (NUL-separated); one JSON object per value.
fn parse_with(program: &str, script: &str, values: &[String]) -> Vec<Value> {
    let mut child = Command::new(program)
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/authres")
                .join(script),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/test installs it)"));
    let mut stdin = child.stdin.take().unwrap();
    for value in values {
        stdin.write_all(value.as_bytes()).unwrap();
        stdin.write_all(b"\0").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn every_field_we_write_parses_with_independent_parsers() {
    let world = VectorWorld::start();
    // The properties our rules add (inbox rules, reputation, AT-SMS client messages).
    let extras = [
        vec![],
        vec![Property::new("atsms-envelope", "yes")],
        vec![
            Property::new("atsms-label", "spam"),
            Property::new("atsms-age", "young"),
        ],
    ];
    let mut values = Vec::new();
    let mut wanted = Vec::new();
    for (case, verdict) in world.verdicts(&world.verifier()).await {
        for extra in &extras {
            values.push(format_value("mx.example.net", &verdict, extra, "\n"));
            wanted.push((
                case["name"].as_str().unwrap().to_string(),
                expected(&verdict, extra),
            ));
        }
    }
    for (program, script) in [("/usr/bin/python3", "parse.py"), ("perl", "parse.pl")] {
        let parsed = parse_with(program, script, &values);
        assert_eq!(parsed.len(), values.len(), "{script}: one answer per value");
        for ((name, want), (got, value)) in wanted.iter().zip(parsed.iter().zip(&values)) {
            assert_eq!(
                got["authserv_id"], "mx.example.net",
                "{script} {name}: {got}\n{value}"
            );
            assert_eq!(&got["results"], want, "{script} {name}:\n{value}");
        }
    }
}
