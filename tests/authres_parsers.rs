//! Every `Authentication-Results` value we write, for every vector, read back by the two
//! common independent RFC 8601 parsers: Python's `authres` (python3-authres) and Perl's
//! `Mail::AuthenticationResults` (libmail-authenticationresults-perl), both installed by
//! scripts/test. Method, result, reason and each property must come back exactly.
// The kit's futures (testkit/) are laid out across a crate boundary, deeper than the
// default limit of 128.
#![recursion_limit = "256"]

use atsms_testkit as support;

use atsms_milter::format::auth_results::{Property, format_value};
use atsms_milter::format::envelope::AuthResult;
use atsms_milter::verification::verify::Verdict;
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};
use support::vectors::VectorWorld;

/// What `header.from` must read for a message's From field, worked out here from the field
/// itself (not by the code under test): the address as written when its local part is a
/// dot-atom, else the domain alone (spec section 8; neither parser reads a quoted local
/// part in any form RFC 8601 allows — Mail::AuthenticationResults splits it).
fn header_from_of(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.lines();
    let mut field = lines
        .by_ref()
        .find(|l| l.len() > 5 && l[..5].eq_ignore_ascii_case("from:"))?[5..]
        .to_string();
    for more in lines.take_while(|l| l.starts_with([' ', '\t'])) {
        field.push_str(more);
    }
    let address = match (field.rfind('<'), field.rfind('>')) {
        (Some(open), Some(close)) if open < close => field[open + 1..close].trim().to_string(),
        _ => field.trim().to_string(),
    };
    let (local, domain) = address.rsplit_once('@')?;
    let dot_atom = local.split('.').all(|atom| {
        !atom.is_empty()
            && atom
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c))
    });
    Some(if dot_atom {
        address.clone()
    } else {
        domain.to_string()
    })
}

/// What a parser must read out of the value we wrote for `verdict` of the message `raw`.
fn expected(verdict: &Verdict, raw: &[u8], extra: &[Property]) -> Value {
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
                properties.push(json!(["header", "from", header_from_of(raw).unwrap()]));
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
                // Our reasons hold no `"` or `\\` to lose (spec section 8): read back as they are.
                _ => json!(sig.reason.as_ref().unwrap().to_string()),
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
        let raw =
            std::fs::read(support::test_data("envelope").join(case["file"].as_str().unwrap()))
                .unwrap();
        for extra in &extras {
            values.push(format_value("mx.example.net", &verdict, extra, "\n"));
            wanted.push((
                case["name"].as_str().unwrap().to_string(),
                expected(&verdict, &raw, extra),
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
