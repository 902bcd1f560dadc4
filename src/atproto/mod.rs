//! The atproto layer: identities (DID documents, handles, device certificates, the cache and
//! the directory budget) and inter-service auth tokens.

pub mod device;
pub mod device_token;
pub mod identity;
pub mod service_auth;
