use super::report::Report;
use super::*;

const T0: i64 = 1_795_528_800; // a whole hour

fn reads(n: u64) -> Counts {
    let mut c = Counts::default();
    c.allowed[0] = n;
    c
}

fn report(keys: &[(&str, u64)]) -> Report {
    Report {
        keys: keys
            .iter()
            .map(|(n, c)| ((*n).to_owned(), reads(*c)))
            .collect(),
        ..Report::default()
    }
}

fn known(name: &str) -> Option<Resolved> {
    (name != "gone").then(|| Resolved {
        key_id: format!("key_{name}"),
        ..Resolved::default()
    })
}

#[test]
fn reports_add_up_and_unknown_keys_change_nothing() {
    let book = UsageBook::default();
    let t = book.take(&report(&[("shop", 3), ("gone", 5)]), T0, known);
    assert_eq!(t.keys, 1);
    assert_eq!(t.unknown, vec!["gone".to_owned()]);
    book.take(&report(&[("shop", 4)]), T0 + 10, known);
    assert_eq!(book.len(), 1, "an unknown key gets no entry");
    let v = book.view("key_shop", &Stored::default(), T0 + 20);
    assert_eq!(v["sinceCreation"]["allowed"]["read"], 7);
    assert_eq!(v["sinceCreation"]["requests"], 7);
    assert_eq!(v["lastHour"]["allowed"], 7);
    assert_eq!(v["lastDay"]["requests"], 7);
    assert_eq!(book.unknown_keys.get(), 1);
}

#[test]
fn last_seen_advances_at_most_every_five_minutes() {
    let book = UsageBook::default();
    book.take(&report(&[("shop", 1)]), T0, known);
    assert_eq!(book.last_seen("key_shop"), Some(T0));
    book.take(&report(&[("shop", 1)]), T0 + LAST_SEEN_STEP - 1, known);
    assert_eq!(book.last_seen("key_shop"), Some(T0));
    book.take(&report(&[("shop", 1)]), T0 + LAST_SEEN_STEP, known);
    assert_eq!(book.last_seen("key_shop"), Some(T0 + LAST_SEEN_STEP));
}

#[test]
fn windows_forget_what_is_older_than_an_hour_or_a_day() {
    let book = UsageBook::default();
    book.take(&report(&[("shop", 5)]), T0, known);
    book.take(&report(&[("shop", 2)]), T0 + 3_600, known);
    let v = book.view("key_shop", &Stored::default(), T0 + 3_600);
    assert_eq!(v["lastHour"]["allowed"], 2, "{v}");
    assert_eq!(v["lastDay"]["allowed"], 7);
    let v = book.view("key_shop", &Stored::default(), T0 + 2 * 86_400);
    assert_eq!(
        (
            v["lastHour"]["allowed"].clone(),
            v["lastDay"]["allowed"].clone()
        ),
        (0.into(), 0.into())
    );
    assert_eq!(v["sinceCreation"]["requests"], 7, "since creation stays");
}

#[test]
fn a_key_first_seen_starts_from_what_was_stored() {
    let book = UsageBook::default();
    let stored = Stored {
        last_seen: Some(T0 - 10),
        total: reads(100),
    };
    book.take(&report(&[("shop", 1)]), T0, |_| {
        Some(Resolved {
            key_id: "key_shop".into(),
            stored: stored.clone(),
            quotas: Vec::new(),
        })
    });
    let v = book.view("key_shop", &Stored::default(), T0);
    assert_eq!(v["sinceCreation"]["allowed"]["read"], 101);
    assert_eq!(
        book.last_seen("key_shop"),
        Some(T0 - 10),
        "within five minutes of the stored one"
    );
    let never = book.view("key_other", &stored, T0);
    assert_eq!(never["sinceCreation"]["allowed"]["read"], 100);
}

#[test]
fn writes_are_due_oldest_first_and_bounded() {
    let book = UsageBook::default();
    book.take(&report(&[("a", 1), ("b", 1), ("c", 1)]), T0, known);
    let due = book.due(2, T0);
    assert_eq!(due.len(), 2);
    for d in &due {
        book.stored(d, T0 + 1);
    }
    let rest = book.due(10, T0 + 1);
    assert_eq!(rest.len(), 1, "the one not written yet");
    book.stored(&rest[0], T0 + 2);
    assert!(book.due(10, T0 + 2).is_empty());
    book.take(&report(&[("a", 1)]), T0 + 3, known);
    assert!(
        book.due(10, T0 + 3).is_empty(),
        "counts alone wait for the step"
    );
    let due = book.due(10, T0 + 2 + LAST_SEEN_STEP);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].usage.total, reads(2));
}

#[test]
fn the_file_keeps_everything_across_a_restart() {
    let dir = std::env::temp_dir().join(format!("layergate-usage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let book = UsageBook::default();
    book.take(&report(&[("shop", 3)]), T0, known);
    assert!(book.changed());
    book.save(&dir, T0).expect("saved");
    assert!(!book.changed());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join(file::FILE))
        .expect("file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = UsageBook::default();
    again.load(&dir).expect("loaded");
    assert_eq!(
        again.view("key_shop", &Stored::default(), T0 + 60),
        book.view("key_shop", &Stored::default(), T0 + 60)
    );
    std::fs::write(dir.join(file::FILE), "{").expect("broken");
    let e = UsageBook::default().load(&dir).expect_err("refused");
    assert!(format!("{e:#}").contains("not JSON"), "{e:#}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_quota_is_spent_once_per_period_and_a_new_period_starts_from_zero() {
    use layergate_filter::ratelimit::{Period, Quota};
    let book = UsageBook::default();
    let limited = |name: &str| {
        Some(Resolved {
            key_id: format!("key_{name}"),
            quotas: vec![Quota {
                requests: 10,
                per: Period::Hour,
            }],
            ..Resolved::default()
        })
    };
    let t = book.take(&report(&[("shop", 6)]), T0 + 60, limited);
    assert!(t.spent.is_empty());
    let t = book.take(&report(&[("shop", 4)]), T0 + 120, limited);
    assert_eq!(
        t.spent,
        vec![Spent {
            key_id: "key_shop".into(),
            name: "shop".into(),
            until: T0 + 3600
        }],
        "the tenth request spends an hourly quota until the hour's end"
    );
    let t = book.take(&report(&[("shop", 5)]), T0 + 180, limited);
    assert!(t.spent.is_empty(), "spent once per period");
    let v = book.view("key_shop", &Stored::default(), T0 + 200);
    assert_eq!(v["quotas"][0]["used"], 15, "{v}");
    assert_eq!(v["quotas"][0]["spent"], true);
    let t = book.take(&report(&[("shop", 9)]), T0 + 3600, limited);
    assert!(t.spent.is_empty(), "the next hour starts from zero");
    let v = book.view("key_shop", &Stored::default(), T0 + 3601);
    assert_eq!(
        (
            v["quotas"][0]["used"].clone(),
            v["quotas"][0]["spent"].clone()
        ),
        (9.into(), false.into())
    );
    // Refusals do not spend a quota.
    let mut refused = report(&[]);
    let mut c = Counts::default();
    c.refused[2] = 50;
    refused.keys.push(("shop".into(), c));
    assert!(book.take(&refused, T0 + 3700, limited).spent.is_empty());
}
