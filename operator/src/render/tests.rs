//! The names rendering derives from store names: no two stores ever share one.

use super::*;

/// Names that a lossy mapping would merge: separators, case, the escape characters
/// themselves, and spellings of an escape.
const TRICKY: [&str; 14] = [
    "prod-eu",
    "prod.eu",
    "prod_eu",
    "prod--eu",
    "prod-2eeu",
    "prodx2eeu",
    "prod_2eeu",
    "PROD-EU",
    "Prod-eu",
    "prod-eu.",
    "prod-eu-",
    "prodéu",
    "a",
    "a-",
];

#[test]
fn credential_variables_are_distinct_for_every_store_name() {
    assert_eq!(credential_env("prod-eu"), "LAYERGATE_CREDENTIAL_PROD_EU");
    assert_eq!(credential_env("prod.eu"), "LAYERGATE_CREDENTIAL_PRODx2eEU");
    let names: std::collections::BTreeSet<String> =
        TRICKY.iter().map(|s| credential_env(s)).collect();
    assert_eq!(names.len(), TRICKY.len(), "{names:?}");
    // Every one is a C identifier (what Istio's vmConfig.env and a container's env take).
    for n in &names {
        assert!(
            n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{n}"
        );
    }
}

#[test]
fn store_clusters_are_distinct_for_every_store_name() {
    assert_eq!(
        store_cluster("turbopuffer-default"),
        "store_turbopuffer-default"
    );
    assert_eq!(store_cluster("prod.eu"), "store_prod_2eeu");
    let names: std::collections::BTreeSet<String> =
        TRICKY.iter().map(|s| store_cluster(s)).collect();
    assert_eq!(names.len(), TRICKY.len(), "{names:?}");
}

#[test]
fn the_control_routes_hold_as_much_body_as_the_control_api_takes() {
    assert_eq!(
        upstream::CONTROL_BODY_BYTES,
        crate::api::MINT_BODY_BYTES as u64
    );
}
