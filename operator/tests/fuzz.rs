//! Bounded fuzzing of the manifest reader, validation and rendering (issue 10: no input may
//! make the operator panic, hang or grow without bound). The demo manifests are mutated at
//! random — characters, YAML punctuation, multibyte text, numbers at the edges — and every
//! mutant goes through what a pass does. `LAYERGATE_FUZZ_ITERATIONS` sets the count (`make
//! fuzz` runs a long one).
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use layergate_operator::manifests::Objects;
use layergate_operator::render::{self, RenderOptions};
use layergate_operator::validate;
use std::path::Path;

fn iterations(default: usize) -> usize {
    std::env::var("LAYERGATE_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Fragments that hit the parsers' edges.
const SPLICES: &[&str] = &[
    "5日",
    "3000000d",
    "999999999999999999d",
    "-1d",
    "never",
    "0s",
    "\u{1F600}",
    "[",
    "{",
    "}",
    ": ",
    "\n- ",
    "\n---\n",
    "*",
    "?",
    "vectorstore.",
    "layer",
    "agent.",
    "http://127.0.0.1.attacker.example:80",
    "https://",
    "[::1]",
    ":0",
    ":99999",
    "9999-12-31T23:59:59Z",
    "10000-01-01T00:00:00Z",
    "2027-02-30T00:00:00Z",
    "!!binary",
    "&a",
    "*a",
    "~",
    "\"",
    "'",
    "\t",
    "\0",
];

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..=rng.below(4) {
        let at = rng.below(chars.len() + 1);
        match rng.below(4) {
            0 if at < chars.len() => {
                chars.remove(at);
            }
            1 => {
                let s = SPLICES[rng.below(SPLICES.len())];
                chars.splice(at..at, s.chars());
            }
            2 if at < chars.len() => {
                // Replace a run with a splice: changes values wholesale.
                let end = (at + rng.below(12)).min(chars.len());
                let s = SPLICES[rng.below(SPLICES.len())];
                chars.splice(at..end, s.chars());
            }
            _ => {
                let c = char::from(b" azAZ09:-{}[]\n"[rng.below(14)]);
                chars.insert(at.min(chars.len()), c);
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn property_mutated_manifests_never_panic_and_render_only_what_the_filter_accepts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/demo/manifests");
    let files: Vec<String> = [
        "secrets.yaml",
        "vectorstores.yaml",
        "indexes.yaml",
        "apikeys.yaml",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
    .collect();
    let mut rng = Rng(0x0123_4567_89AB_CDEF);
    let runs = iterations(1_500);
    let (mut rendered, mut refused_docs) = (0, 0);
    for _ in 0..runs {
        let victim = rng.below(files.len());
        let mut objects = Objects::default();
        for (i, text) in files.iter().enumerate() {
            let text = if i == victim {
                mutate(&mut rng, text)
            } else {
                text.clone()
            };
            objects.add_yaml(&format!("file{i}"), &text);
        }
        refused_docs += objects.problems.len();
        let v = validate::validate(&objects, "layer", 1_800_000_000);
        // Every object read gets a verdict; one bad object never hides the others.
        assert_eq!(
            v.keys.len(),
            objects
                .keys
                .iter()
                .filter(|k| k.metadata.namespace.as_deref() == Some("layer"))
                .count()
        );
        // Whatever validation lets through, the filter's compiler accepts (render checks it).
        match render::filter_config(&v, &RenderOptions::default()) {
            Ok(_) => rendered += 1,
            Err(e) => panic!("validation let through what the filter refuses: {e}"),
        }
    }
    eprintln!(
        "manifests: {runs} executions, {rendered} rendered, {refused_docs} unreadable documents reported"
    );
}

#[test]
fn property_random_lifetimes_never_panic() {
    let mut rng = Rng(0xFEED_FACE_0BAD_F00D);
    let runs = iterations(20_000);
    for _ in 0..runs {
        let len = rng.below(24);
        let s: String = (0..len)
            .map(|_| {
                let pool = [
                    '0', '1', '9', 'd', 'h', 'm', 's', '-', '+', ' ', '日', 'e', '.',
                ];
                pool[rng.below(pool.len())]
            })
            .collect();
        if let Ok(Some(secs)) = validate::parse_duration(&s) {
            assert!(
                secs > 0 && secs <= layergate_filter::time::MAX_LIFETIME_SECS,
                "{s}"
            );
        }
    }
    eprintln!("lifetimes: {runs} executions");
}
