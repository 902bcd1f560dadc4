//! The service's own DID document (`GET /.well-known/did.json`) for a `did:web` service DID.

use crate::atproto::service_auth::SERVICE_ID;

/// The service's own DID document, for a `did:web` service DID: the `#atsms_signer` service a
/// PDS proxies to (`atproto-proxy: <did>#atsms_signer`).
pub fn service_document(service_did: &str) -> Option<serde_json::Value> {
    let identifier = service_did.strip_prefix("did:web:")?;
    let (host, port) = crate::format::syntax::web_did_host(identifier)?;
    let endpoint = match port {
        Some(port) => format!("https://{host}:{port}"),
        None => format!("https://{host}"),
    };
    Some(serde_json::json!({
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": service_did,
        "service": [{
            "id": format!("#{SERVICE_ID}"),
            "type": "AtsmsSignerService",
            "serviceEndpoint": endpoint,
        }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_document_names_the_signer_endpoint() {
        let doc = service_document("did:web:signer.example.net").unwrap();
        assert_eq!(doc["service"][0]["id"], "#atsms_signer");
        assert_eq!(doc["service"][0]["type"], "AtsmsSignerService");
        assert_eq!(
            doc["service"][0]["serviceEndpoint"],
            "https://signer.example.net"
        );
        assert_eq!(
            service_document("did:web:localhost%3A8443").unwrap()["service"][0]["serviceEndpoint"],
            "https://localhost:8443"
        );
        assert!(service_document("did:plc:ofurdhfyhjhgomvfygxergep").is_none());
    }
}
