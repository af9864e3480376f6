//! Targets, a key's grants, and containment of one grant in another.
#![allow(clippy::unwrap_used)]
use super::*;

fn grant(scopes: &[Scope], namespaces: Option<&[&str]>) -> Entitlement {
    Entitlement {
        scopes: scopes.to_vec(),
        namespaces: namespaces.map(|n| n.iter().map(|s| (*s).to_owned()).collect()),
        claims: Vec::new(),
    }
}

fn ents(list: &[(&str, Entitlement)]) -> Entitlements {
    list.iter()
        .map(|(t, e)| ((*t).to_owned(), e.clone()))
        .collect()
}

#[test]
fn targets_parse_and_malformed_ones_are_refused() {
    assert_eq!(parse_target("layer"), Ok(Target::Layer));
    assert_eq!(
        parse_target("vectorstore.primary"),
        Ok(Target::VectorStore("primary"))
    );
    assert_eq!(parse_target("agent.a_1"), Ok(Target::Agent("a_1")));
    assert_eq!(
        parse_target("warehouse.prod-snowflake"),
        Ok(Target::Warehouse("prod-snowflake"))
    );
    for bad in [
        "",
        "layers",
        "vectorstore.",
        "vectorstore",
        "agent.",
        "warehouse.",
        "store.x",
        "vectorstore.a/b",
        "vectorstore.日本",
        "Layer",
    ] {
        assert!(parse_target(bad).is_err(), "{bad:?}");
    }
    assert!(parse_target(&format!("agent.{}", "a".repeat(254))).is_err());
}

#[test]
fn a_key_whose_owner_or_name_is_too_long_for_the_audit_line_is_refused() {
    let mut k = ApiKeyConfig {
        key_id: "key_1".into(),
        name: "k".into(),
        owner: Some("o".repeat(crate::config::MAX_OWNER_BYTES)),
        lookup_hash: crate::config::LookupHash::of("t"),
        expires_at: None,
        entitlements: ents(&[("layer", grant(&[Scope::Read], None))]),
        previous: None,
        limits: None,
        quota_spent_until: None,
    };
    assert!(check_api_key(&k).is_ok());
    k.owner = Some("o".repeat(crate::config::MAX_OWNER_BYTES + 1));
    assert!(check_api_key(&k)
        .err()
        .unwrap_or_default()
        .contains("owner"));
    k.owner = None;
    k.name = "n".repeat(254);
    assert!(check_api_key(&k).err().unwrap_or_default().contains("name"));
}

#[test]
fn a_key_with_an_unreadable_expiry_or_glob_is_refused() {
    let mut k = ApiKeyConfig {
        key_id: "key_1".into(),
        name: "k".into(),
        owner: None,
        lookup_hash: crate::config::LookupHash::of("t"),
        expires_at: Some("10239-01-01T00:00:00Z".into()),
        entitlements: ents(&[("layer", grant(&[Scope::Read], None))]),
        previous: None,
        limits: None,
        quota_spent_until: None,
    };
    assert!(check_api_key(&k)
        .err()
        .unwrap_or_default()
        .contains("RFC 3339"));
    k.expires_at = Some("2027-01-01T00:00:00Z".into());
    assert_eq!(check_api_key(&k), Ok(()));
    k.entitlements = ents(&[("vectorstore.a", grant(&[], Some(&[])))]);
    assert!(check_api_key(&k)
        .err()
        .unwrap_or_default()
        .contains("empty namespaces"));
    k.entitlements = ents(&[("vectorstore.a", grant(&[], Some(&["a/b"])))]);
    assert!(check_api_key(&k).is_err());
    k.entitlements = ents(&[("bogus", grant(&[], None))]);
    assert!(check_api_key(&k).is_err());
}

#[test]
fn a_key_with_a_zero_or_absurd_limit_is_refused() {
    let mut k = ApiKeyConfig {
        key_id: "key_1".into(),
        name: "k".into(),
        lookup_hash: crate::config::LookupHash::of("t"),
        expires_at: None,
        entitlements: ents(&[("layer", grant(&[Scope::Read], None))]),
        previous: None,
        limits: None,
        owner: None,
        quota_spent_until: None,
    };
    let limits = |r| crate::ratelimit::RateLimits {
        requests_per_second: Some(r),
        ..Default::default()
    };
    for bad in [0, 1_000_001] {
        k.limits = Some(limits(bad));
        let m = check_api_key(&k).err().unwrap_or_default();
        assert!(m.contains("between 1 and 1000000"), "{m}");
    }
    k.limits = Some(limits(50));
    let compiled = compile_key(&k, &HashMap::new(), 0).map(|m| m.grants.rate());
    assert_eq!(
        compiled,
        Ok(Some(crate::ratelimit::Rate {
            per_second: 50,
            burst: 50
        }))
    );
}

#[test]
fn scopes_must_be_held_admin_holds_all() {
    let admin = grant(&[Scope::Admin], None);
    let read = grant(&[Scope::Read], None);
    let rw = grant(&[Scope::Read, Scope::Write], None);
    assert!(grant_within("t", &admin, &rw).is_ok());
    assert!(grant_within("t", &admin, &admin).is_ok());
    assert!(grant_within("t", &rw, &read).is_ok());
    assert!(grant_within("t", &read, &rw)
        .err()
        .unwrap_or_default()
        .contains("write"));
    assert!(grant_within("t", &rw, &admin)
        .err()
        .unwrap_or_default()
        .contains("admin"));
}

#[test]
fn namespaces_must_be_contained() {
    let shop = grant(&[Scope::Read], Some(&["shop-*"]));
    let all = grant(&[Scope::Read], None);
    let star = grant(&[Scope::Read], Some(&["*"]));
    assert!(grant_within("t", &all, &shop).is_ok());
    assert!(grant_within("t", &star, &shop).is_ok());
    assert!(grant_within("t", &shop, &shop).is_ok());
    assert!(grant_within("t", &shop, &grant(&[Scope::Read], Some(&["shop-eu-*"]))).is_ok());
    assert!(grant_within("t", &shop, &all).is_err(), "omitted means all");
    assert!(grant_within("t", &shop, &star).is_err());
    assert!(grant_within("t", &shop, &grant(&[Scope::Read], Some(&["shop*"]))).is_err());
    assert!(grant_within("t", &shop, &grant(&[Scope::Read], Some(&["[s]hop-*"]))).is_err());
}

#[test]
fn claims_must_be_held() {
    let mut held = grant(&[], None);
    held.claims = vec!["notes:cohort:*:read".into()];
    let mut asked = held.clone();
    assert!(grant_within("warehouse.w", &held, &asked).is_ok());
    asked.claims.push("notes:*:*:write".into());
    assert!(grant_within("warehouse.w", &held, &asked).is_err());
}

#[test]
fn a_target_not_held_is_refused_even_with_admin_elsewhere() {
    let held = ents(&[("vectorstore.primary", grant(&[Scope::Admin], None))]);
    let ok = ents(&[(
        "vectorstore.primary",
        grant(&[Scope::Read], Some(&["cohort-*"])),
    )]);
    assert!(within(&held, &ok).is_ok());
    let other_store = ents(&[("vectorstore.archive", grant(&[Scope::Admin], None))]);
    assert!(within(&held, &other_store)
        .err()
        .unwrap_or_default()
        .contains("vectorstore.archive"));
    let layer = ents(&[("layer", grant(&[Scope::Read], None))]);
    assert!(within(&held, &layer).is_err());
    assert!(within(&held, &Entitlements::default()).is_ok());
}
