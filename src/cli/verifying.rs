//! `atsms-milter verify` and `verify-cms`.

use std::sync::Arc;

use super::*;

pub(super) fn verify(args: VerifyArgs) -> ExitCode {
    let mut raw = Vec::new();
    if let Err(e) = read_input(args.file.as_ref())
        .and_then(|mut r| r.read_to_end(&mut raw).map_err(|e| e.to_string()))
    {
        return fail(exit::NO_INPUT, e);
    }
    let parsed = match message::read_message(&raw[..]) {
        Ok(parsed) => parsed,
        Err(e) => return fail(exit::NO_INPUT, e.to_string()),
    };
    let resolver = match args.resolver.resolver() {
        Ok(r) => r,
        Err(e) => return fail(exit::USAGE, e),
    };
    let Ok(rt) = runtime() else {
        return fail(exit::SOFTWARE, "cannot start the async runtime");
    };
    let verifier = Verifier::new(Arc::new(resolver), args.resolver.config().timeout());
    let recipients: Vec<String> = args.rcpt.iter().map(|r| r.to_ascii_lowercase()).collect();
    let context = Context {
        now: args.resolver.now(),
        recipients: &recipients,
    };
    let verdict = rt.block_on(verifier.verify(&parsed.headers, &parsed.body_hash, &context));
    // AT-SMS's own content (docs/atsms.md): what it is, and the X.509 floor's result when it
    // is a SignedData.
    let found = crate::floor::find_in_message(&raw);
    let floor = found.as_ref().and_then(|f| f.input.as_ref()).map(|input| {
        rt.block_on(crate::floor::verify(
            verifier.identity(),
            &input.der,
            input.detached.as_deref(),
            context.now,
        ))
    });
    let mut results: Vec<AuthResult> = verdict.signatures.iter().map(|s| s.result).collect();
    results.extend(floor.as_ref().map(|f| f.result));
    let output = if args.json {
        let envelope = found.as_ref().map(|f| f.kind.as_str());
        let mut objects = match serde_json::to_value(&verdict) {
            Ok(serde_json::Value::Array(objects)) => objects,
            _ => Vec::new(),
        };
        if let Some(floor) = &floor {
            objects.push(serde_json::json!({
                "result": floor.result,
                "did": floor.did,
                "kid": floor.did.as_ref().zip(floor.fingerprint.as_ref()).map(|(did, fp)| {
                    format!("at://{did}/{}/{fp}", crate::envelope::token::DEVICE_CERT_COLLECTION)
                }),
                "reason": floor.reason,
                "handle": null,
                "aligned": null,
                "stale": false,
            }));
        } else if objects.is_empty() && envelope.is_some() {
            // AT-SMS client mail carries no AT-SMS-Signature: report what it is, as the
            // milter's `atsms=none policy.atsms-envelope=yes` does.
            objects.push(serde_json::json!({
                "result": "none", "did": null, "kid": null,
                "reason": "no AT-SMS-Signature; an AT-SMS client message",
                "handle": null, "aligned": null, "stale": false,
            }));
        }
        for object in &mut objects {
            object["atsms_envelope"] = serde_json::json!(envelope);
        }
        serde_json::to_string_pretty(&objects).unwrap_or_else(|_| "[]".into())
    } else {
        let authserv_id = args.authserv_id.unwrap_or_else(crate::host::name);
        let value = match &floor {
            Some(floor) if verdict.signatures.is_empty() => {
                format!(" {authserv_id}; {}", auth_results::floor_resinfo(floor))
            }
            Some(floor) => format!(
                "{};\n\t{}",
                auth_results::format_value(&authserv_id, &verdict, &[], "\n"),
                auth_results::floor_resinfo(floor)
            ),
            None => auth_results::format_value(&authserv_id, &verdict, &[], "\n"),
        };
        format!("{}:{value}", auth_results::FIELD_NAME)
    };
    println!("{output}");
    ExitCode::from(if results.is_empty() {
        exit::NO_SIGNATURE
    } else if results.contains(&AuthResult::Pass) {
        exit::PASS
    } else if results.contains(&AuthResult::Temperror) {
        exit::TEMPFAIL
    } else {
        exit::NO_PASS
    })
}

pub(super) fn verify_cms(args: VerifyCmsArgs) -> ExitCode {
    let mut raw = Vec::new();
    if let Err(e) = read_input(args.file.as_ref())
        .and_then(|mut r| r.read_to_end(&mut raw).map_err(|e| e.to_string()))
    {
        return fail(exit::NO_INPUT, e);
    }
    let resolver = match args.resolver.resolver() {
        Ok(r) => Arc::new(r),
        Err(e) => return fail(exit::USAGE, e),
    };
    let Ok(rt) = runtime() else {
        return fail(exit::SOFTWARE, "cannot start the async runtime");
    };
    let verdict = match crate::floor::read_input(&raw) {
        Ok(input) => rt.block_on(crate::floor::verify(
            &resolver,
            &input.der,
            input.detached.as_deref(),
            args.resolver.now(),
        )),
        Err(e) => crate::floor::FloorVerdict {
            result: e.result(),
            did: None,
            fingerprint: None,
            published: None,
            reason: Some(e.to_string()),
        },
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&verdict).unwrap_or_else(|_| "{}".into())
        );
    } else {
        let did = verdict.did.as_deref().unwrap_or("-");
        match &verdict.reason {
            Some(reason) => println!("{} {did} ({reason})", verdict.result),
            None => println!("{} {did}", verdict.result),
        }
    }
    ExitCode::from(match verdict.result {
        AuthResult::Pass => exit::PASS,
        AuthResult::Temperror => exit::TEMPFAIL,
        _ => exit::NO_PASS,
    })
}
