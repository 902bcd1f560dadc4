//! The envelope vectors (tests/data/envelope), served as the independent implementation
//! published them: DID documents by a loopback PLC directory, device records by a loopback
//! PDS, handles and mail hosts (`_atsms-mail` TXT) by DNS.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::dns::{Answer, DnsServer};
use crate::http::{HttpServer, Reply, query_param};
use crate::test_data;

pub struct VectorWorld {
    pub vectors: Value,
    pub keys: Value,
    pub plc: HttpServer,
    pub dns: DnsServer,
}

fn load(name: &str) -> Value {
    let path = test_data("envelope").join(name);
    serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

impl VectorWorld {
    pub fn start() -> VectorWorld {
        let vectors = load("vectors.json");
        let dids = load("dids.json");
        let records = load("records.json");
        let handles = load("handles.json");
        let keys = load("keys.json");
        let mailhosts = load("mailhosts.json");
        // The documents name a placeholder PDS; this server is the PDS too.
        let own_url: Arc<std::sync::OnceLock<String>> = Arc::new(std::sync::OnceLock::new());
        let url = own_url.clone();
        let plc = HttpServer::start(Arc::new(move |target: &str| {
            if target.starts_with("/xrpc/com.atproto.repo.getRecord") {
                let uri = format!(
                    "at://{}/{}/{}",
                    query_param(target, "repo").unwrap_or_default(),
                    query_param(target, "collection").unwrap_or_default(),
                    query_param(target, "rkey").unwrap_or_default()
                );
                return match records.get(&uri) {
                    Some(record) => Reply::json(200, record.to_string()),
                    None => Reply::json(
                        400,
                        r#"{"error":"RecordNotFound","message":"Could not locate record"}"#,
                    ),
                };
            }
            let did = target.trim_start_matches('/');
            match dids.get(did) {
                Some(Value::Object(_)) => {
                    let pds = url.get().cloned().unwrap_or_default();
                    let doc = dids[did]
                        .to_string()
                        .replace("https://pds.example.net", &pds);
                    Reply::json(200, doc)
                }
                _ => Reply::json(404, format!(r#"{{"message":"DID not registered: {did}"}}"#)),
            }
        }));
        own_url.set(plc.url()).unwrap();
        let mut zone = HashMap::new();
        for (handle, did) in handles.as_object().unwrap() {
            zone.insert(
                format!("_atproto.{handle}"),
                vec![Answer::Txt(format!("did={}", did.as_str().unwrap()))],
            );
        }
        for host in mailhosts.as_array().unwrap() {
            zone.insert(
                format!("_atsms-mail.{}", host.as_str().unwrap()),
                vec![Answer::Txt("v=atsms1".into())],
            );
        }
        let dns = DnsServer::start(zone);
        VectorWorld {
            vectors,
            keys,
            plc,
            dns,
        }
    }

    pub fn now(&self) -> i64 {
        self.vectors["now"].as_i64().unwrap()
    }

    pub fn cases(&self) -> &Vec<Value> {
        self.vectors["cases"].as_array().unwrap()
    }

    pub fn resolver_config(&self) -> atsms_milter::infra::config::ResolverConfig {
        atsms_milter::infra::config::ResolverConfig {
            plc_urls: vec![self.plc.url().parse().unwrap()],
            dns_servers: vec![self.dns.server_arg().parse().unwrap()],
            allow_private_addresses: true,
            timeout: std::num::NonZeroU64::new(5).unwrap(),
            ..Default::default()
        }
    }

    /// The resolver options of `verify` and `resolve` that point at this world.
    pub fn cli_args(&self) -> Vec<String> {
        vec![
            "--now".into(),
            self.now().to_string(),
            "--plc-url".into(),
            self.plc.url(),
            "--dns-server".into(),
            self.dns.server_arg(),
            "--allow-private-addresses".into(),
        ]
    }
}

impl VectorWorld {
    /// A verifier resolving through this world (its own identity cache).
    pub fn verifier(&self) -> atsms_milter::verification::verify::Verifier {
        let resolver = atsms_milter::atproto::identity::IdentityResolver::new(
            &self.resolver_config(),
            &atsms_milter::infra::config::CacheConfig::default(),
        )
        .unwrap();
        atsms_milter::verification::verify::Verifier::new(
            Arc::new(resolver),
            std::time::Duration::from_secs(5),
        )
    }

    /// Every case with its verdict, as of the vectors' time, no recipients known.
    pub async fn verdicts(
        &self,
        verifier: &atsms_milter::verification::verify::Verifier,
    ) -> Vec<(Value, atsms_milter::verification::verify::Verdict)> {
        let mut out = Vec::new();
        for case in self.cases() {
            let path = crate::test_data("envelope").join(case["file"].as_str().unwrap());
            let message =
                atsms_milter::format::message::read_message(std::fs::File::open(&path).unwrap())
                    .unwrap();
            let context = atsms_milter::verification::verify::Context {
                now: self.now(),
                recipients: &[],
            };
            let verdict = verifier
                .verify(&message.headers, &message.body_hash, &context)
                .await;
            out.push((case.clone(), verdict));
        }
        out
    }

    /// Signs `message` now with the vector key of `did`, as a sender's AT-SMS client would.
    pub fn sign_now(&self, did: &str, message: &[u8]) -> Vec<u8> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        self.sign_at(did, message, now, &[])
    }

    /// The `[resolver]` section pointing at this world, for a daemon's config file.
    pub fn resolver_toml(&self) -> String {
        format!(
            "[resolver]\nplc_urls = [\"{}\"]\ndns_servers = [\"{}\"]\nallow_private_addresses = true\ntimeout = 3\n",
            self.plc.url(),
            self.dns.server_arg()
        )
    }
}

impl VectorWorld {
    /// Signs `message` as of `now` (use `self.now()` for in-process servers with a fixed
    /// clock) with the vector key of `did`, restricted to `rcpt` when given.
    pub fn sign_at(&self, did: &str, message: &[u8], now: i64, rcpt: &[String]) -> Vec<u8> {
        use atsms_milter::format::crypto::SigningKey;
        use atsms_milter::format::envelope::sign;
        let entry = &self.keys[did];
        let key = SigningKey::from_pkcs8_pem(entry["pkcs8_pem"].as_str().unwrap()).unwrap();
        let kid = entry["kid"].as_str().unwrap();
        let parsed = atsms_milter::format::message::read_message(message).unwrap();
        let request = sign::SignRequest {
            key: &key,
            kid,
            now,
            ttl: 3600,
            rcpt,
            jti: sign::random_jti(),
        };
        let token = sign::sign_token(&request, &parsed.headers, parsed.body_hash).unwrap();
        let mut out = sign::format_field(did, &token, "\r\n").into_bytes();
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(message);
        out
    }
}

impl VectorWorld {
    /// A daemon config with an `[lmtp]` section listening on `listen` (socket mode 0666, so
    /// MTAs running as other users can connect), Maildirs under `root`, this world's resolver,
    /// authserv-id `mx.test`; `sections` (a `[milter]` section, say) and `policy` (extra
    /// `[policy]` lines) are added.
    pub fn lmtp_daemon_config(
        &self,
        listen: &str,
        root: &std::path::Path,
        sections: &str,
        policy: &str,
    ) -> String {
        format!(
            "{sections}\n[lmtp]\nlisten = \"{listen}\"\nsocket_mode = \"0666\"\nmaildir = \"{}/%d/%n/Maildir\"\n\n{}\n[policy]\nauthserv_id = \"mx.test\"\n{policy}\n",
            root.display(),
            self.resolver_toml()
        )
    }
}
