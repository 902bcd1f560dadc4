//! `atsms-milter sign` (here, or by the signing service) and `keygen`.

use std::io::{self, Read, Write};

use super::*;

pub(super) fn sign(args: SignArgs) -> ExitCode {
    let mut raw = Vec::new();
    if let Err(e) = read_input(args.file.as_ref())
        .and_then(|mut r| r.read_to_end(&mut raw).map_err(|e| e.to_string()))
    {
        return fail(exit::NO_INPUT, e);
    }
    let parsed = match message::read_message(&raw[..]) {
        Ok(parsed) => parsed,
        Err(e) => return fail(exit::NO_INPUT, e),
    };
    let (did, token) = match (&args.remote, &args.key, &args.kid) {
        (Some(url), _, _) => {
            let jwt = args.service_auth.as_deref().unwrap_or_default();
            match sign_remotely(url, jwt, &args, &parsed) {
                Ok(signed) => signed,
                Err((code, e)) => return fail(code, e),
            }
        }
        (None, Some(key), Some(kid)) => match sign_locally(key, kid, &args, &parsed) {
            Ok(signed) => signed,
            Err((code, e)) => return fail(code, e),
        },
        _ => {
            return fail(
                exit::USAGE,
                "--key and --kid, or --remote and --service-auth",
            );
        }
    };
    let field = crate::format::envelope::sign::format_field(&did, &token, parsed.newline);
    let mut out = io::stdout().lock();
    let written = out
        .write_all(field.as_bytes())
        .and_then(|_| out.write_all(parsed.newline.as_bytes()))
        .and_then(|_| out.write_all(&raw))
        .and_then(|_| out.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(exit::SOFTWARE, format!("writing the message: {e}")),
    }
}

type Signed = Result<(String, String), (u8, String)>;

/// `sign --key --kid`: the token, signed here.
pub(super) fn sign_locally(
    path: &std::path::Path,
    kid: &str,
    args: &SignArgs,
    parsed: &message::ParsedMessage,
) -> Signed {
    use crate::policy::signer::{Outcome, Signer};
    let pem = std::fs::read_to_string(path)
        .map_err(|e| (exit::NO_INPUT, format!("{}: {e}", path.display())))?;
    let key = SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| (exit::NO_PASS, format!("{}: {e}", path.display())))?;
    // The same signer as the milter's: a message the verifier could not pass is not signed.
    let signer =
        Signer::one(key, kid, args.ttl, !args.rcpt.is_empty()).map_err(|e| (exit::USAGE, e))?;
    let now = args.now.unwrap_or_else(crate::infra::clock::unix_now);
    match signer.sign(&parsed.headers, parsed.body_hash, None, &args.rcpt, now) {
        Outcome::Signed { key, token } => Ok((key.did.clone(), token)),
        Outcome::Unsigned(why) => Err((exit::NO_PASS, format!("not signed: {why}"))),
        Outcome::Refused { why, .. } => Err((exit::NO_PASS, format!("not signed: {why}"))),
    }
}

/// `sign --remote --service-auth`: the token, from the signing service.
pub(super) fn sign_remotely(
    url: &str,
    jwt: &str,
    args: &SignArgs,
    parsed: &message::ParsedMessage,
) -> Signed {
    use crate::transport::xrpc::client::{ClientError, sign_remote};
    let rt = runtime().map_err(|e| (exit::TEMPFAIL, e))?;
    rt.block_on(sign_remote(url, jwt, parsed, &args.rcpt, args.ttl))
        .map_err(|e| match e {
            ClientError::Temporary(why) => (exit::TEMPFAIL, why),
            ClientError::Refused(why) => (exit::NO_PASS, why),
            ClientError::Wrong(why) => (exit::SOFTWARE, why),
        })
}

pub(super) fn keygen(args: KeygenArgs) -> ExitCode {
    let alg = match args.curve {
        Curve::K256 => Alg::Es256k,
        Curve::P256 => Alg::Es256,
    };
    match SigningKey::generate(alg) {
        Ok(key) => {
            let public = key.public_key();
            if let Some(did) = &args.did
                && crate::format::syntax::supported_did_method(did).is_none()
            {
                return fail(
                    exit::USAGE,
                    format!("{did} is not a did:plc or did:web DID"),
                );
            }
            print!("{}", key.to_pkcs8_pem());
            eprintln!("multikey: {}", public.to_multikey());
            eprintln!("did:key: {}", public.to_did_key());
            if let Some(did) = &args.did {
                // The verificationMethod to add to the DID document (docs/signing.md says how).
                let method = serde_json::json!({
                    "id": format!("{did}#{}", args.fragment),
                    "type": "Multikey",
                    "controller": did,
                    "publicKeyMultibase": public.to_multikey(),
                });
                eprintln!("{method}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(exit::SOFTWARE, e),
    }
}
