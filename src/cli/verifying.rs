//! `atsms-milter verify` and `verify-cms`.

use std::sync::Arc;

use super::*;
use crate::policy::judge::Settings;

pub(super) fn verify(args: VerifyArgs) -> ExitCode {
    let mut raw = Vec::new();
    if let Err(e) = read_input(args.file.as_ref())
        .and_then(|mut r| r.read_to_end(&mut raw).map_err(|e| e.to_string()))
    {
        return fail(exit::NO_INPUT, e);
    }
    let resolver = match args.resolver.resolver() {
        Ok(r) => r,
        Err(e) => return fail(exit::USAGE, e),
    };
    let Ok(rt) = runtime() else {
        return fail(exit::SOFTWARE, "cannot start the async runtime");
    };
    let verifier = Verifier::new(Arc::new(resolver), args.resolver.config().timeout());
    let mut settings = Settings::new(verifier, crate::infra::config::PolicyConfig::default());
    settings.authserv_id = args
        .authserv_id
        .clone()
        .unwrap_or_else(crate::infra::host::name);
    settings.fixed_now = Some(args.resolver.now());
    let Some((verified, judgement)) = rt.block_on(judged(&settings, &raw, &args.rcpt)) else {
        return fail(exit::NO_INPUT, "the header section is too large");
    };
    let verdict = &judgement.verdict;
    let results: Vec<AuthResult> = verdict.signatures.iter().map(|s| s.result).collect();
    let output = if args.json {
        let envelope = verified.atsms_envelope.map(|kind| kind.as_str());
        let mut objects = match serde_json::to_value(verdict) {
            Ok(serde_json::Value::Array(objects)) => objects,
            _ => Vec::new(),
        };
        if objects.is_empty() && envelope.is_some() {
            // AT-SMS client mail carries no signature of its own here: report what it is,
            // as the judge's `atsms=none policy.atsms-envelope=<kind>` does.
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
        format!("{}:{}", auth_results::FIELD_NAME, judgement.header_value)
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

/// The message as the daemon judges it: through the same session (fields, body hash, forged
/// results, an AT-SMS part and the X.509 floor) and the one judge, for `rcpt` (its recipients'
/// `rcpt` claim; none: the message alone). None when its header section is over the limits.
async fn judged(
    settings: &Settings,
    raw: &[u8],
    rcpt: &[String],
) -> Option<(
    crate::policy::judge::Verified,
    crate::policy::judge::Judgement,
)> {
    use crate::policy::judge::{MessageBytes, MessageSession, Origin, Scope, Target};
    let mut message = MessageBytes::new(MessageSession::new(settings), &settings.limits);
    message.push(raw, &mut |_| {});
    message.finish(&mut |_| {});
    if message.too_large {
        return None;
    }
    let verified = message.session.finish(settings, settings.now()).await;
    let targets: Vec<Target> = rcpt.iter().map(|r| Target::new(r, settings)).collect();
    let origin = Origin {
        id: "verify",
        transport: "cli",
        sender: "",
    };
    let judgement =
        crate::policy::judge::judge(settings, &origin, &verified, &targets, Scope::Together)
            .await
            .pop()?;
    Some((verified, judgement))
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
    let verdict = if looks_like_a_message(&raw) {
        // A message (S/MIME): judged as the daemon judges it, its X.509 floor reported.
        let verifier = Verifier::new(resolver, args.resolver.config().timeout());
        let mut settings = Settings::new(verifier, crate::infra::config::PolicyConfig::default());
        settings.fixed_now = Some(args.resolver.now());
        let judged = rt.block_on(judged(&settings, &raw, &[]));
        let floor = judged.as_ref().and_then(|(_, judgement)| {
            judgement
                .verdict
                .signatures
                .iter()
                .find(|s| s.kid.as_deref().is_some_and(|k| k.starts_with("at://")))
                .map(floor_verdict)
        });
        floor.unwrap_or_else(|| crate::verification::atsms_parts::FloorVerdict {
            result: AuthResult::None,
            did: None,
            fingerprint: None,
            published: None,
            reason: Some("no SignedData by a device certificate in the message".into()),
        })
    } else {
        // A bare DER or PEM structure has no From to align: the floor's own step, which the
        // judge's runs too (`floor::check_signed`, `floor::published`).
        match crate::verification::atsms_parts::read_input(&raw) {
            Ok(input) => rt.block_on(crate::verification::atsms_parts::verify(
                &resolver,
                &input.der,
                input.detached.as_deref(),
                args.resolver.now(),
            )),
            Err(e) => crate::verification::atsms_parts::FloorVerdict {
                result: e.result(),
                did: None,
                fingerprint: None,
                published: None,
                reason: Some(e.to_string()),
            },
        }
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

/// Whether `raw` is a mail message rather than a DER or PEM structure.
fn looks_like_a_message(raw: &[u8]) -> bool {
    raw.first() != Some(&0x30)
        && !String::from_utf8_lossy(&raw[..raw.len().min(4096)]).contains("-----BEGIN ")
}

/// The judge's verdict on a SignedData, as `verify-cms` reports it.
fn floor_verdict(
    s: &crate::verification::verify::SignatureVerdict,
) -> crate::verification::atsms_parts::FloorVerdict {
    use crate::verification::atsms_parts::FloorError;
    use crate::verification::verify::Reason;
    let published = match (&s.result, &s.reason) {
        (AuthResult::Pass, _) => Some(true),
        (AuthResult::Temperror, _) => None,
        (_, Some(Reason::Floor(FloorError::Unpublished(_)))) => Some(false),
        _ => None,
    };
    crate::verification::atsms_parts::FloorVerdict {
        result: s.result,
        did: s.did.clone(),
        fingerprint: s
            .kid
            .as_deref()
            .and_then(|k| k.rsplit_once('/'))
            .map(|(_, fp)| fp.to_string()),
        published,
        reason: s.reason.as_ref().map(|r| r.to_string()),
    }
}
