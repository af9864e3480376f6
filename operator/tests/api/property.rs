//! The property test: random mint bodies (`make fuzz` runs it with more iterations, through
//! the `property_` filter).

use crate::{fixture, ADMIN};
use hyper::StatusCode;
use layergate_operator::source::Source;

/// A tiny deterministic generator, so the property test needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() % v.len() as u64) as usize]
    }
}

#[test]
fn property_random_mint_bodies_never_panic_and_never_widen_the_caller() {
    let f = fixture("fuzz", 120, |_, t| t);
    let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
    let seeds = [
        r#"{"name":"k","expiresAfter":"30d","entitlements":{"vectorstore.primary":{"scopes":["read"],"namespaces":["shop-*"]}}}"#,
        r#"{"name":"k","entitlements":{"vectorstore.archive":{"scopes":["admin"]}}}"#,
        r#"{"name":"k","entitlements":{"layer":{"scopes":["admin"]},"warehouse.w":{"claims":["a"]}}}"#,
    ];
    let pool: Vec<char> = "{}[]\":,0129dhmsazk-_.*?/ \\日é\u{0}".chars().collect();
    let mut statuses = std::collections::BTreeMap::new();
    let runs: usize = std::env::var("LAYERGATE_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(400, |n: usize| n.min(20_000));
    for i in 0..runs {
        let mut chars: Vec<char> = rng.pick(&seeds).chars().collect();
        for _ in 0..=(rng.next() % 4) {
            let at = (rng.next() % (chars.len() as u64 + 1)) as usize;
            let c = *rng.pick(&pool);
            match rng.next() % 3 {
                0 if at < chars.len() => chars[at] = c,
                1 if at < chars.len() => {
                    chars.remove(at);
                }
                _ => chars.insert(at, c),
            }
        }
        let body: String = chars.into_iter().collect();
        let body = body.replacen("\"k\"", &format!("\"k{i}\""), 1);
        let headers = vec![("authorization".to_owned(), format!("Bearer {ADMIN}"))];
        let (status, reply) = f.respond("POST", "/v2/keys", &headers, body.clone().into_bytes());
        assert!(
            [
                StatusCode::CREATED,
                StatusCode::BAD_REQUEST,
                StatusCode::FORBIDDEN,
                StatusCode::CONFLICT
            ]
            .contains(&status),
            "{body} → {status} {reply}"
        );
        *statuses.entry(status.as_u16()).or_insert(0) += 1;
    }
    // Whatever was minted stays within demo-admin's own store.
    let pass = f.source.state().last().unwrap();
    assert!(
        pass.config.api_keys.is_empty(),
        "minted keys travel by the key service"
    );
    for k in &pass.keys {
        for (target, _) in &k.entitlements {
            assert!(target == "vectorstore.primary", "{} got {target}", k.name);
        }
    }
    eprintln!("mint bodies: {runs} executions, statuses {statuses:?}");
}
