//! `atsms-milter verify`.

use std::sync::Arc;

use super::*;

pub(super) fn verify(args: VerifyArgs) -> ExitCode {
    let parsed = match read_input(args.file.as_ref())
        .and_then(|r| message::read_message(r).map_err(|e| e.to_string()))
    {
        Ok(parsed) => parsed,
        Err(e) => return fail(exit::NO_INPUT, e),
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
    let output = if args.json {
        serde_json::to_string_pretty(&verdict).unwrap_or_else(|_| "[]".into())
    } else {
        let authserv_id = args.authserv_id.unwrap_or_else(crate::host::name);
        format!(
            "{}:{}",
            auth_results::FIELD_NAME,
            auth_results::format_value(&authserv_id, &verdict, &[], "\n")
        )
    };
    println!("{output}");
    let results: Vec<AuthResult> = verdict.signatures.iter().map(|s| s.result).collect();
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
