//! Conformance: every case of tests/data/envelope/vectors.json, made by an independent
//! implementation, resolved through the real HTTP and DNS client code.
// The kit's futures (testkit/) are laid out across a crate boundary, deeper than the
// default limit of 128.
#![recursion_limit = "256"]

use atsms_testkit as support;

use support::vectors::VectorWorld;

#[tokio::test]
async fn every_vector_gives_its_result() {
    let world = VectorWorld::start();
    let mut checked = 0;
    for (case, verdict) in world.verdicts(&world.verifier()).await {
        let name = case["name"].as_str().unwrap();
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
