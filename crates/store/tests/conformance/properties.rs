//! A property test of a record's life: random sequences of create, patch, delete, restore,
//! legal holds and their release, `:purge`, purge batches and the passing of time over a
//! few records, checked step by step
//! against a plain model — what `get` returns, what a default list and its count show
//! (never a deleted record) — and, at the end, that the audit chain verifies and holds one
//! entry per change.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const MODELLED: &str = r#"
[retention]
default = "1h"

[collections.things]
unique = [["code"]]

[collections.things.fields]
code = { type = "string" }
"#;

const IDS: [&str; 3] = ["r0", "r1", "r2"];
const CODES: [&str; 3] = ["A", "B", "C"];
const MINUTE: i64 = 60 * SECOND;

#[derive(Debug, Clone)]
enum Op {
    Create(usize, usize),
    Patch(usize, usize),
    Delete(usize),
    Restore(usize),
    Purge(usize),
    Hold(usize),
    /// Releases the record's oldest active hold (or an unknown one, when it has none).
    Release(usize),
    PurgeBatch,
    /// Minutes pass.
    Wait(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..IDS.len(), 0..CODES.len()).prop_map(|(i, c)| Op::Create(i, c)),
        2 => (0..IDS.len(), 0..CODES.len()).prop_map(|(i, c)| Op::Patch(i, c)),
        2 => (0..IDS.len()).prop_map(Op::Delete),
        2 => (0..IDS.len()).prop_map(Op::Restore),
        1 => (0..IDS.len()).prop_map(Op::Purge),
        1 => (0..IDS.len()).prop_map(Op::Hold),
        1 => (0..IDS.len()).prop_map(Op::Release),
        2 => Just(Op::PurgeBatch),
        2 => (1_i64..90).prop_map(Op::Wait),
    ]
}

/// What the model knows of a record.
#[derive(Debug, Clone, PartialEq)]
struct Modelled {
    version: i64,
    code: String,
    /// `(deletion id, purge_at)` while deleted.
    deleted: Option<(String, Timestamp)>,
    /// Active holds, oldest first.
    holds: Vec<String>,
}

#[derive(Debug, Default)]
struct Model {
    records: BTreeMap<String, Modelled>,
    /// Audit entries the changes so far must have written.
    audited: u64,
}

impl Model {
    /// The active record other than `id` holding `code`.
    fn holder(&self, id: &str, code: &str) -> Option<String> {
        self.records
            .iter()
            .find(|(other, r)| other.as_str() != id && r.deleted.is_none() && r.code == code)
            .map(|(other, _)| other.clone())
    }
}

fn unique_conflict_with(r: &Result<impl std::fmt::Debug, StoreError>, holder: &str, what: &str) {
    assert!(
        matches!(r, Err(StoreError::UniqueConflict { conflicting_id, fields }) if conflicting_id == holder && fields == &["code"]),
        "{what}: expected a conflict with {holder}, got {r:?}"
    );
}

async fn step(store: &Arc<dyn Store>, c: &Arc<Collection>, model: &mut Model, op: &Op, now: Timestamp, n: usize) {
    let who = actor("t1");
    match op {
        Op::Create(i, code) => {
            let (id, code) = (IDS[*i], CODES[*code]);
            let record = new_record("t1", c, id, values(&[("code", s(code))]), now);
            let r = store.create_record(&who, c, record, None).await;
            if model.records.contains_key(id) {
                assert!(matches!(r, Err(StoreError::UniqueConflict { .. })), "create of a used id {id}: {r:?}");
            } else if let Some(holder) = model.holder(id, code) {
                unique_conflict_with(&r, &holder, "create");
            } else {
                r.unwrap_or_else(|e| panic!("create {id}: {e:?}"));
                model
                    .records
                    .insert(id.into(), Modelled { version: 1, code: code.into(), deleted: None, holds: vec![] });
                model.audited += 1;
            }
        }
        Op::Patch(i, code) => {
            let (id, code) = (IDS[*i], CODES[*code]);
            let r = store.patch_record(&who, c, id, None, patch(json!({ "code": code })), now).await;
            match model.records.get(id).cloned() {
                None | Some(Modelled { deleted: Some(_), .. }) => {
                    assert!(matches!(r, Err(StoreError::NotFound)), "patch of absent/deleted {id}: {r:?}");
                }
                Some(current) => match model.holder(id, code) {
                    Some(holder) => unique_conflict_with(&r, &holder, "patch"),
                    None => {
                        let got = r.unwrap_or_else(|e| panic!("patch {id}: {e:?}"));
                        assert_eq!(got.version, current.version + 1);
                        model
                            .records
                            .insert(id.into(), Modelled { version: current.version + 1, code: code.into(), ..current });
                        model.audited += 1;
                    }
                },
            }
        }
        Op::Delete(i) => {
            let id = IDS[*i];
            let deletion_id = format!("del_{n}");
            let r = delete_as(store, c, "t1", id, &deletion_id, now).await;
            match model.records.get_mut(id) {
                None => assert!(matches!(r, Err(StoreError::NotFound)), "delete of absent {id}: {r:?}"),
                Some(m) => match &m.deleted {
                    Some((earlier, _)) => {
                        assert_eq!(r.unwrap(), DeleteOutcome::AlreadyDeleted { deletion_id: earlier.clone() });
                    }
                    None => {
                        assert!(matches!(r, Ok(DeleteOutcome::SoftDeleted { .. })), "delete {id}: {r:?}");
                        m.version += 1;
                        m.deleted = Some((deletion_id, plus(now, HOUR)));
                        model.audited += 1;
                    }
                },
            }
        }
        Op::Restore(i) => {
            let id = IDS[*i];
            let r = store.restore_record(&who, c, id, None, None, now).await;
            let holder = model.records.get(id).and_then(|m| model.holder(id, &m.code));
            match model.records.get_mut(id) {
                None => assert!(matches!(r, Err(StoreError::NotFound)), "restore of absent {id}: {r:?}"),
                Some(m) => match &m.deleted {
                    None => assert!(matches!(r, Ok(RestoreOutcome::AlreadyActive(_))), "restore of active {id}: {r:?}"),
                    Some((_, purge_at)) if now >= *purge_at => {
                        assert!(matches!(r, Err(StoreError::NotFound)), "restore after the window {id}: {r:?}");
                    }
                    Some(_) => match holder {
                        Some(holder) => unique_conflict_with(&r, &holder, "restore"),
                        None => {
                            assert!(matches!(r, Ok(RestoreOutcome::Restored(_))), "restore {id}: {r:?}");
                            m.version += 1;
                            m.deleted = None;
                            model.audited += 1;
                        }
                    },
                },
            }
        }
        Op::Purge(i) => {
            let id = IDS[*i];
            let r = store.purge_record(&who, c, id, None, now).await;
            match model.records.get(id) {
                None => assert!(matches!(r, Err(StoreError::NotFound)), "purge of absent {id}: {r:?}"),
                Some(Modelled { deleted: None, .. }) => {
                    assert!(matches!(r, Err(StoreError::NotDeleted)), "purge of active {id}: {r:?}");
                }
                Some(m) if !m.holds.is_empty() => {
                    assert!(matches!(r, Err(StoreError::LegalHold)), "purge of held {id}: {r:?}");
                }
                Some(_) => {
                    r.unwrap_or_else(|e| panic!("purge {id}: {e:?}"));
                    model.records.remove(id);
                    model.audited += 1;
                }
            }
        }
        Op::PurgeBatch => {
            let due: Vec<String> = model
                .records
                .iter()
                .filter(|(_, m)| m.holds.is_empty() && m.deleted.as_ref().is_some_and(|(_, purge_at)| *purge_at <= now))
                .map(|(id, _)| id.clone())
                .collect();
            let batch = store.purge_batch(c, now, 100, &format!("run_{n}")).await.unwrap();
            assert_eq!(batch.purged, due.len() as u64, "due: {due:?}");
            for id in due {
                model.records.remove(&id);
                model.audited += 1;
            }
        }
        Op::Hold(i) => {
            let id = IDS[*i];
            let r = store.place_hold(&who, c, id, None, None, now).await;
            match model.records.get_mut(id) {
                None => assert!(matches!(r, Err(StoreError::NotFound)), "hold of absent {id}: {r:?}"),
                Some(m) => {
                    let hold = r.unwrap_or_else(|e| panic!("hold {id}: {e:?}"));
                    m.holds.push(hold.hold_id);
                    m.version += 1;
                    model.audited += 1;
                }
            }
        }
        Op::Release(i) => {
            let id = IDS[*i];
            let hold = model.records.get(id).and_then(|m| m.holds.first().cloned());
            let r = store.release_hold(&who, c, id, hold.as_deref().unwrap_or("hold_unknown"), None, now).await;
            match (model.records.get_mut(id), hold) {
                (Some(m), Some(_)) => {
                    let got = r.unwrap_or_else(|e| panic!("release of {id}: {e:?}"));
                    m.holds.remove(0);
                    m.version += 1;
                    model.audited += 1;
                    assert_eq!((got.version, got.legal_hold), (m.version, !m.holds.is_empty()));
                }
                _ => assert!(matches!(r, Err(StoreError::NotFound)), "release of no hold of {id}: {r:?}"),
            }
        }
        Op::Wait(_) => {}
    }
}

/// `get` agrees with the model for every id; a default list and its count show exactly the
/// active records.
async fn check(store: &Arc<dyn Store>, c: &Arc<Collection>, model: &Model, after: &Op) {
    for id in IDS {
        let got = get(store, c, "t1", id).await;
        match (model.records.get(id), got) {
            (None, None) => {}
            (Some(m), Some(r)) => {
                assert_eq!(r.version, m.version, "{id} after {after:?}");
                assert_eq!(r.values.get("code"), Some(&s(&m.code)), "{id} after {after:?}");
                let deletion = r.deletion.as_ref().map(|d| (d.deletion_id.clone(), d.purge_at));
                assert_eq!(deletion, m.deleted, "{id} after {after:?}");
                assert_eq!(r.legal_hold, !m.holds.is_empty(), "{id} after {after:?}");
            }
            (m, r) => panic!("{id} after {after:?}: the model has {m:?}, the store {r:?}"),
        }
    }
    let page =
        store.list_records("t1", c, &ListQuery { count: true, limit: 100, ..ListQuery::default() }).await.unwrap();
    let listed: Vec<String> = page.items.iter().map(|r| r.id.clone()).collect();
    let active: Vec<String> =
        model.records.iter().filter(|(_, m)| m.deleted.is_none()).map(|(id, _)| id.clone()).collect();
    assert_eq!(sorted(listed), active, "the default list after {after:?}");
    assert_eq!(page.total, Some(active.len() as u64), "the count after {after:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_record_s_life_follows_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(each_store(|store| {
            let ops = ops.clone();
            async move {
                let sch = schema(MODELLED);
                store.migrate(&sch).await.unwrap();
                let c = coll(&sch, "things");
                let mut model = Model::default();
                let mut now = at(0);
                for (n, op) in ops.iter().enumerate() {
                    now = plus(now, SECOND);
                    if let Op::Wait(minutes) = op {
                        now = plus(now, minutes * MINUTE);
                    }
                    step(&store, &c, &mut model, op, now, n).await;
                    check(&store, &c, &model, op).await;
                }
                assert_eq!(store.verify_audit().await.unwrap(), Ok(model.audited), "one entry per change, chained");
            }
        }));
    }
}
