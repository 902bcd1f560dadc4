//! Conformance: every case of tests/data/envelope/vectors.json, made by an independent
//! implementation, resolved through the real HTTP and DNS client code.

mod support;

use std::sync::Arc;

use atsms_milter::config::CacheConfig;
use atsms_milter::identity::IdentityResolver;
use atsms_milter::message::read_message;
use atsms_milter::verify::{Context, Verifier};
use support::vectors::VectorWorld;

#[tokio::test]
async fn every_vector_gives_its_result() {
    let world = VectorWorld::start();
    let resolver =
        IdentityResolver::new(&world.resolver_config(), &CacheConfig::default()).unwrap();
    let verifier = Verifier::new(Arc::new(resolver), std::time::Duration::from_secs(5));
    let mut checked = 0;
    for case in world.cases() {
        let name = case["name"].as_str().unwrap();
        let path = support::test_data("envelope").join(case["file"].as_str().unwrap());
        let message = read_message(std::fs::File::open(&path).unwrap()).unwrap();
        let context = Context {
            now: world.now(),
            recipients: &[],
        };
        let verdict = verifier
            .verify(&message.headers, &message.body_hash, &context)
            .await;
        let expect = case["expect"].as_array().unwrap();
        assert_eq!(
            verdict.signatures.len(),
            expect.len(),
            "{name}: number of signatures"
        );
        for (got, want) in verdict.signatures.iter().zip(expect) {
            assert_eq!(
                got.result.as_str(),
                want["result"].as_str().unwrap(),
                "{name}: result ({:?})",
                got.reason
            );
            assert_eq!(got.did.as_deref(), want["did"].as_str(), "{name}: did");
            assert_eq!(got.aligned(), want["aligned"].as_bool(), "{name}: aligned");
            if got.result.as_str() == "pass" {
                assert!(got.reason.is_none(), "{name}: pass has no reason");
            } else {
                assert!(
                    got.reason
                        .as_ref()
                        .is_some_and(|r| !r.to_string().is_empty()),
                    "{name}: reason"
                );
            }
        }
        checked += 1;
    }
    // Every message in the directory is a case: none is left unchecked.
    let files = std::fs::read_dir(support::test_data("envelope"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "eml")
        })
        .count();
    assert_eq!(checked, files, "every .eml file has a case");
}
