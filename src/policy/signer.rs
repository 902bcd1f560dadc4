//! Signing: the key table (`[[signing.key]]`), who may sign what, and building the token.
//! The signing milter and the signing service (XRPC) both sign through here. No network:
//! checking that each key is published in its DID document is the daemon's, at start.
//!
//! Like OpenDKIM's and dkim-milter's signing tables, a key names the From addresses it signs
//! for; unlike them it also names the SASL logins that may use it, so that one user cannot sign
//! as another (what Postfix's `reject_sender_login_mismatch` does for envelope senders).

use std::net::IpAddr;
use std::path::Path;

use crate::format::crypto::SigningKey;
use crate::format::envelope::sign::{self, Covered, SignRequest};
use crate::format::envelope::{HeaderField, Mailbox};
use crate::format::reply::Reply;
use crate::infra::config::{Network, OnSignError, SigningConfig, in_networks};

/// One signing identity, loaded.
pub struct Key {
    /// `user@domain` or `*@domain`, lower-case.
    senders: Vec<String>,
    pub did: String,
    pub kid: String,
    key: SigningKey,
    /// SASL logins that may use it; `*`: any.
    logins: Vec<String>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("did", &self.did)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Whether this key signs for `from` (`*@domain` matches any local part there; `*`, the
    /// command line's one key, any address).
    fn signs_for(&self, from: &Mailbox) -> bool {
        let address = from.claim_form().to_ascii_lowercase();
        let domain = from.domain.to_ascii_lowercase();
        self.senders
            .iter()
            .any(|s| s == "*" || *s == address || s.strip_prefix("*@").is_some_and(|d| d == domain))
    }

    /// Whether `login` (none: a client of `signing.networks`) may use this key: `*` is
    /// anyone the signer signs for at all.
    fn allows(&self, login: Option<&str>) -> bool {
        self.logins
            .iter()
            .any(|l| l == "*" || login.is_some_and(|login| l == login))
    }

    /// The public key, to check it is published in the DID document.
    pub fn public_key(&self) -> crate::format::crypto::PublicKey {
        self.key.public_key()
    }

    /// The fragment of `kid` (`atsms` of `did:plc:…#atsms`).
    pub fn fragment(&self) -> &str {
        self.kid.split_once('#').map_or("", |(_, f)| f)
    }
}

/// Why a message is not signed (the log says which; only `Failed` is an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotSigned {
    #[error("no signing key for this From address")]
    NoKey,
    #[error("login {login} may not use the key for {from}")]
    LoginNotAllowed { login: String, from: String },
    #[error("{0}")]
    Fields(crate::format::envelope::FieldError),
    #[error("signing failed: {0}")]
    Failed(String),
}

/// What signing a message came to: decided here, for the signing milter and the command line
/// alike; they only carry it out.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// Signed: the token, for `sign::format_field`.
    Signed { key: &'a Key, token: String },
    /// Passed on unsigned, for this reason (`NoKey` is routine; the others are worth a log
    /// line at info level).
    Unsigned(NotSigned),
    /// Refused (`signing.on_error = "tempfail"` and signing failed): never silently unsigned.
    Refused { reply: Reply, why: String },
}

/// The keys in force and what decides their use.
#[derive(Debug)]
pub struct Signer {
    keys: Vec<Key>,
    ttl: i64,
    rcpt_claim: bool,
    networks: Vec<Network>,
    pub on_error: OnSignError,
}

/// Reads a key file: PKCS#8 PEM, refused if others may read it.
pub fn read_key(path: &Path) -> Result<SigningKey, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("signing key {}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(format!(
            "signing key {} is readable by others (chmod o-r; mode 0600 or 0640)",
            path.display()
        ));
    }
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("signing key {}: {e}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| format!("signing key {}: {e}", path.display()))
}

impl Signer {
    /// Loads every `[[signing.key]]`; none when there is none.
    pub fn load(config: &SigningConfig) -> Result<Option<Signer>, String> {
        if config.keys.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        for k in &config.keys {
            if crate::format::envelope::Kid::parse(&k.kid).is_none() {
                return Err(format!("signing key {}: kid is not DID#fragment", k.kid));
            }
            keys.push(Key {
                senders: k.senders.iter().map(|s| s.to_ascii_lowercase()).collect(),
                did: k.did.clone(),
                kid: k.kid.clone(),
                key: read_key(&k.key_file)?,
                logins: k.logins.clone().unwrap_or_default(),
            });
        }
        Ok(Some(Signer {
            keys,
            ttl: config.ttl.get() as i64,
            rcpt_claim: config.rcpt_claim,
            networks: config.networks.clone(),
            on_error: config.on_error,
        }))
    }

    /// A signer with one key, for any From address and any client: `atsms-milter sign`. The
    /// token names `rcpt` when some are given.
    pub fn one(key: SigningKey, kid: &str, ttl: i64, with_rcpt: bool) -> Result<Signer, String> {
        let parsed = crate::format::envelope::Kid::parse(kid)
            .ok_or_else(|| format!("--kid {kid:?} is not DID#fragment"))?;
        Ok(Signer {
            keys: vec![Key {
                senders: vec!["*".into()],
                did: parsed.did().to_string(),
                kid: kid.to_string(),
                key,
                logins: vec!["*".into()],
            }],
            ttl,
            rcpt_claim: with_rcpt,
            networks: Vec::new(),
            on_error: OnSignError::Tempfail,
        })
    }

    /// Signs a message (its fields and relaxed body hash) for `login`, as of `now`: with the
    /// key its From address and the login may use, if the message is one the verifier could
    /// pass (step 10); a failure to sign follows `signing.on_error`.
    pub fn sign(
        &self,
        headers: &[HeaderField],
        body_hash: [u8; 32],
        login: Option<&str>,
        recipients: &[String],
        now: i64,
    ) -> Outcome<'_> {
        let key = match self.key_for(headers, login) {
            Ok(key) => key,
            Err(e) => return Outcome::Unsigned(e),
        };
        match self.sign_message(key, headers, body_hash, recipients, now) {
            Ok(token) => Outcome::Signed { key, token },
            Err(NotSigned::Failed(why)) if self.on_error == OnSignError::Tempfail => {
                Outcome::Refused {
                    reply: Reply::new(
                        451,
                        crate::format::reply::Enhanced(4, 3, 0),
                        "AT-SMS signing failed temporarily",
                    ),
                    why,
                }
            }
            Err(e) => Outcome::Unsigned(e),
        }
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Whether a message from this client is to be signed rather than judged: an SMTP
    /// AUTH login, or a client in `signing.networks`.
    pub fn signs_for_client(&self, client: Option<IpAddr>, login: Option<&str>) -> bool {
        login.is_some() || client.is_some_and(|ip| in_networks(ip, &self.networks))
    }

    /// The key that signs a message with these fields for `login` (step 10 must hold).
    pub fn key_for(&self, headers: &[HeaderField], login: Option<&str>) -> Result<&Key, NotSigned> {
        let from = crate::format::envelope::check_fields(headers).map_err(NotSigned::Fields)?;
        let mut candidates = self.keys.iter().filter(|k| k.signs_for(&from)).peekable();
        if candidates.peek().is_none() {
            return Err(NotSigned::NoKey);
        }
        candidates
            .find(|k| k.allows(login))
            .ok_or_else(|| NotSigned::LoginNotAllowed {
                login: login.unwrap_or("(none)").to_string(),
                from: from.to_string(),
            })
    }

    /// The key of `did` (the signing service signs only for the caller's own DID).
    pub fn key_of_did(&self, did: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.did == did)
    }

    /// The token for a message (its fields and relaxed body hash), as of `now`, for
    /// `recipients` when `rcpt_claim` is set; `sign::format_field` makes the field of it.
    pub fn sign_message(
        &self,
        key: &Key,
        headers: &[HeaderField],
        body_hash: [u8; 32],
        recipients: &[String],
        now: i64,
    ) -> Result<String, NotSigned> {
        let rcpt: &[String] = if self.rcpt_claim { recipients } else { &[] };
        let request = self.request(key, rcpt, now, self.ttl);
        sign::sign_token(&request, headers, body_hash).map_err(|e| NotSigned::Failed(e.to_string()))
    }

    /// The token for what a client hashed itself (the signing service).
    pub fn sign_covered(
        &self,
        key: &Key,
        covered: &Covered<'_>,
        rcpt: &[String],
        ttl: Option<i64>,
        now: i64,
    ) -> Result<String, NotSigned> {
        let request = self.request(key, rcpt, now, ttl.unwrap_or(self.ttl));
        sign::token_for(&request, covered).map_err(|e| NotSigned::Failed(e.to_string()))
    }

    fn request<'a>(&self, key: &'a Key, rcpt: &'a [String], now: i64, ttl: i64) -> SignRequest<'a> {
        SignRequest {
            key: &key.key,
            kid: &key.kid,
            now,
            ttl,
            rcpt,
            jti: sign::random_jti(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::crypto::Alg;
    use crate::infra::config::SigningKeyConfig;

    const DID: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

    fn signer(
        dir: &Path,
        mode: u32,
        logins: Option<Vec<String>>,
    ) -> Result<Option<Signer>, String> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("k.pem");
        std::fs::write(
            &path,
            SigningKey::generate(Alg::Es256k).unwrap().to_pkcs8_pem(),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        Signer::load(&SigningConfig {
            keys: vec![SigningKeyConfig {
                senders: vec!["alice@alice.example.com".into(), "*@example.org".into()],
                did: DID.into(),
                kid: format!("{DID}#atsms"),
                key_file: path,
                logins,
            }],
            networks: vec!["192.0.2.0/24".parse().unwrap()],
            ..SigningConfig::default()
        })
    }

    fn fields(from: &str) -> Vec<HeaderField> {
        vec![
            HeaderField::new("From", format!(" {from}")),
            HeaderField::new("Subject", " hi"),
        ]
    }

    #[test]
    fn keys_are_private_and_name_senders_and_logins() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            signer(dir.path(), 0o644, Some(vec!["*".into()]))
                .unwrap_err()
                .contains("readable by others")
        );
        let s = signer(dir.path(), 0o600, Some(vec!["alice".into()]))
            .unwrap()
            .unwrap();
        assert_eq!(
            s.key_for(&fields("Alice <alice@Alice.Example.com>"), Some("alice"))
                .unwrap()
                .did,
            DID
        );
        assert_eq!(
            s.key_for(&fields("bob@EXAMPLE.org"), Some("alice"))
                .unwrap()
                .fragment(),
            "atsms"
        );
        assert_eq!(
            s.key_for(&fields("eve@evil.example"), Some("alice"))
                .unwrap_err(),
            NotSigned::NoKey
        );
        assert!(matches!(
            s.key_for(&fields("alice@alice.example.com"), Some("mallory")),
            Err(NotSigned::LoginNotAllowed { .. })
        ));
        assert!(matches!(
            s.key_for(
                &[
                    HeaderField::new("From", " a@example.org"),
                    HeaderField::new("from", " b@example.org")
                ],
                Some("alice")
            ),
            Err(NotSigned::Fields(_))
        ));
        assert!(s.signs_for_client(Some("192.0.2.9".parse().unwrap()), None));
        assert!(s.signs_for_client(None, Some("alice")));
        assert!(!s.signs_for_client(Some("127.0.0.1".parse().unwrap()), None));
        // `*`: every login, and the clients of signing.networks.
        let open = signer(dir.path(), 0o600, Some(vec!["*".into()]))
            .unwrap()
            .unwrap();
        for login in [None, Some("mallory")] {
            assert!(
                open.key_for(&fields("alice@alice.example.com"), login)
                    .is_ok()
            );
        }
    }

    #[test]
    fn what_it_signs_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let s = signer(dir.path(), 0o640, Some(vec!["*".into()]))
            .unwrap()
            .unwrap();
        let headers = fields("alice@alice.example.com");
        let key = s.key_for(&headers, None).unwrap();
        let token = s.sign_message(key, &headers, [7; 32], &[], 1000).unwrap();
        let token = crate::format::envelope::token::parse(&token, DID).unwrap();
        assert_eq!(token.claims.from, "alice@alice.example.com");
        assert_eq!(token.claims.exp - token.claims.iat, 86_400);
        key.public_key()
            .verify(token.signing_input.as_bytes(), &token.signature)
            .unwrap();
    }
}
