//! Archive (SPEC §17): `archive_record` (set, clear, unchanged, preconditions, deleted
//! records), what lists and counts see of archived records, a patch of an archived record,
//! and `archive_batch` (the `archive_after` pass: stale records only, oldest first, at
//! most `limit`, each audited and announced as `system`).

use tombstone_domain::lifecycle::ArchiveRequest;
use tombstone_domain::query::{ArchivedScope, Candidates, Fingerprints, fingerprint};

use super::*;

const SCHEMA: &str = r#"
[retention]
default = "1h"

[collections.orders]
archive_after = "90d"
unique = [["code"]]

[collections.orders.fields]
code = { type = "string" }

[collections.notes.fields]
text = { type = "string" }
"#;

fn archive(reason: &str) -> ArchiveRequest {
    ArchiveRequest::Archive { reason: Some(reason.into()) }
}

async fn listed(
    store: &Arc<dyn Store>,
    c: &Arc<Collection>,
    scope: DeletedScope,
    archived: ArchivedScope,
) -> Vec<String> {
    let q = ListQuery { scope, archived, count: true, limit: 100, ..ListQuery::default() };
    let page = store.list_records("t1", c, &q).await.unwrap();
    let ids: Vec<String> = page.items.iter().map(|r| r.id.clone()).collect();
    assert_eq!(page.total, Some(ids.len() as u64), "the count agrees with the list");
    ids
}

#[tokio::test]
async fn archive_and_unarchive_write_the_mark_once_with_audit_and_event() {
    each_store(|store| async move {
        let sch = schema(SCHEMA);
        store.migrate(&sch).await.unwrap();
        let orders = coll(&sch, "orders");
        let who = actor("t1");
        create(&store, &orders, "t1", "a", values(&[("code", s("A"))]), at(0)).await;

        let r = store.archive_record(&who, &orders, "a", archive("done"), None, at(SECOND)).await.unwrap();
        let mark = r.archive.clone().expect("archived");
        assert_eq!(
            (mark.archived_at, mark.archived_by.as_str(), mark.reason.as_deref()),
            (at(SECOND), "key_t1", Some("done"))
        );
        assert_eq!((r.version, r.updated_at), (2, at(SECOND)));
        assert_eq!(must_get(&store, &orders, "t1", "a").await, r);
        // Again, even with a stale If-Match: unchanged.
        let again = store
            .archive_record(&who, &orders, "a", archive("again"), Some(IfMatch::parse("\"v1\"")), at(2 * SECOND))
            .await
            .unwrap();
        assert_eq!(again, r);
        // Read-only while archived.
        let refused = store.patch_record(&who, &orders, "a", None, patch(json!({"code": "B"})), at(2 * SECOND)).await;
        assert!(matches!(refused, Err(StoreError::Archived)), "{refused:?}");
        // Unarchive: a stale If-Match is refused, the right one clears the mark.
        let stale = store
            .archive_record(
                &who,
                &orders,
                "a",
                ArchiveRequest::Unarchive,
                Some(IfMatch::parse("\"v1\"")),
                at(3 * SECOND),
            )
            .await;
        assert!(matches!(stale, Err(StoreError::PreconditionFailed { current: 2 })), "{stale:?}");
        let un = store
            .archive_record(
                &who,
                &orders,
                "a",
                ArchiveRequest::Unarchive,
                Some(IfMatch::parse("\"v2\"")),
                at(3 * SECOND),
            )
            .await
            .unwrap();
        assert_eq!((un.archive.clone(), un.version), (None, 3));
        assert_eq!(
            store.archive_record(&who, &orders, "a", ArchiveRequest::Unarchive, None, at(4 * SECOND)).await.unwrap(),
            un
        );

        let audit = store
            .list_audit("t1", &AuditQuery { record_id: Some("a".into()), limit: 100, ..AuditQuery::default() })
            .await
            .unwrap();
        let actions: Vec<(&str, Option<i64>, Option<&str>)> =
            audit.iter().map(|e| (e.action.as_str(), e.version, e.reason.as_deref())).collect();
        assert_eq!(
            actions,
            vec![("create", Some(1), None), ("archive", Some(2), Some("done")), ("unarchive", Some(3), None)]
        );
        let events = store.list_events("t1", &EventQuery { limit: 100, ..EventQuery::default() }).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, vec!["record.created", "record.archived", "record.unarchived"]);
        assert_eq!(events[1].data.as_ref().unwrap()["archived"], true);

        // Absent, another tenant's, deleted: not found.
        for (tenant, id) in [("t1", "nope"), ("t2", "a")] {
            let r = store.archive_record(&actor(tenant), &orders, id, archive("x"), None, at(5 * SECOND)).await;
            assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        }
        soft_delete(&store, &orders, "t1", "a", at(5 * SECOND)).await;
        let r = store.archive_record(&who, &orders, "a", archive("x"), None, at(6 * SECOND)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    })
    .await;
}

#[tokio::test]
async fn lists_and_counts_see_archived_records_only_when_asked_and_delete_keeps_the_mark() {
    each_store(|store| async move {
        let sch = schema(SCHEMA);
        store.migrate(&sch).await.unwrap();
        let orders = coll(&sch, "orders");
        let who = actor("t1");
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            create(&store, &orders, "t1", id, values(&[("code", s(&format!("C{i}")))]), at(0)).await;
        }
        store.archive_record(&who, &orders, "b", archive("r"), None, at(SECOND)).await.unwrap();
        store.archive_record(&who, &orders, "c", archive("r"), None, at(SECOND)).await.unwrap();
        soft_delete(&store, &orders, "t1", "c", at(2 * SECOND)).await;
        soft_delete(&store, &orders, "t1", "d", at(2 * SECOND)).await;

        use ArchivedScope::{Exclude, Include, Only};
        use DeletedScope::{Active, All, Deleted};
        assert_eq!(listed(&store, &orders, Active, Exclude).await, ["a"]);
        assert_eq!(listed(&store, &orders, Active, Include).await, ["a", "b"]);
        assert_eq!(listed(&store, &orders, Active, Only).await, ["b"]);
        assert_eq!(listed(&store, &orders, All, Exclude).await, ["a", "d"]);
        assert_eq!(listed(&store, &orders, All, Include).await, ["a", "b", "c", "d"]);
        assert_eq!(listed(&store, &orders, Deleted, Only).await, ["c"]);

        let counts = store.collection_counts("t1", std::slice::from_ref(&orders), at(HOUR * 24)).await.unwrap();
        assert_eq!((counts[0].active, counts[0].archived, counts[0].deleted), (1, 1, 2));

        // Deleted and restored, it comes back archived; its unique value stayed taken.
        let c = must_get(&store, &orders, "t1", "c").await;
        assert!(c.is_deleted() && c.is_archived(), "{c:?}");
        let dup = store
            .create_record(
                &who,
                &orders,
                new_record("t1", &orders, "e", values(&[("code", s("C1"))]), at(3 * SECOND)),
                None,
            )
            .await;
        assert!(
            matches!(&dup, Err(StoreError::UniqueConflict { conflicting_id, .. }) if conflicting_id == "b"),
            "{dup:?}"
        );
        match store.restore_record(&who, &orders, "c", None, None, at(3 * SECOND)).await.unwrap() {
            RestoreOutcome::Restored(r) => assert!(r.is_archived() && !r.is_deleted(), "{r:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(listed(&store, &orders, Active, Only).await, ["b", "c"]);
    })
    .await;
}

#[tokio::test]
async fn archive_batch_archives_stale_records_oldest_first_as_system() {
    each_store(|store| async move {
        let sch = schema(SCHEMA);
        store.migrate(&sch).await.unwrap();
        let (orders, notes) = (coll(&sch, "orders"), coll(&sch, "notes"));
        let who = actor("t1");
        // Last updated at 3 s, 1 s, 2 s, 4 s; one deleted, one archived already.
        for (id, t) in [("w", 3), ("x", 1), ("y", 2), ("z", 4), ("gone", 0), ("kept", 0)] {
            create(&store, &orders, "t1", id, Values::new(), at(t * SECOND)).await;
        }
        create(&store, &orders, "t2", "other", Values::new(), at(0)).await;
        create(&store, &notes, "t1", "n", Values::new(), at(0)).await;
        soft_delete(&store, &orders, "t1", "gone", at(SECOND)).await;
        store.archive_record(&who, &orders, "kept", archive("by hand"), None, at(SECOND)).await.unwrap();

        // Cutoff 3 s: w, x, y, other are stale; two at a time, oldest first.
        let now = at(HOUR);
        assert_eq!(store.archive_batch(&orders, at(3 * SECOND), now, 2, "run_1").await.unwrap(), 2);
        let archived = |r: &Record| r.archive.as_ref().map(|a| (a.archived_by.clone(), a.reason.clone()));
        let system = Some(("system".to_string(), Some("archive_after 90d".to_string())));
        assert_eq!(archived(&must_get(&store, &orders, "t2", "other").await), system, "updated at 0");
        assert_eq!(archived(&must_get(&store, &orders, "t1", "x").await), system, "updated at 1 s");
        assert_eq!(archived(&must_get(&store, &orders, "t1", "y").await), None);
        assert_eq!(store.archive_batch(&orders, at(3 * SECOND), now, 2, "run_1").await.unwrap(), 2);
        assert_eq!(store.archive_batch(&orders, at(3 * SECOND), now, 2, "run_1").await.unwrap(), 0);
        assert_eq!(archived(&must_get(&store, &orders, "t1", "z").await), None, "updated after the cutoff");
        assert!(must_get(&store, &orders, "t1", "gone").await.archive.is_none(), "deleted records are left alone");
        let kept = must_get(&store, &orders, "t1", "kept").await;
        assert_eq!((kept.version, kept.archive.unwrap().reason), (2, Some("by hand".into())));
        // A collection without archive_after is never archived.
        assert_eq!(store.archive_batch(&notes, at(HOUR), now, 10, "run_1").await.unwrap(), 0);

        let w = must_get(&store, &orders, "t1", "w").await;
        assert_eq!((w.version, w.updated_at), (2, now));
        let audit = store
            .list_audit("t1", &AuditQuery { action: Some("archive".into()), limit: 100, ..AuditQuery::default() })
            .await
            .unwrap();
        let mut by: Vec<(String, String, Option<String>)> =
            audit.iter().map(|e| (e.record_id.clone().unwrap(), e.actor.clone(), e.request_id.clone())).collect();
        by.sort();
        assert_eq!(
            by,
            vec![
                ("kept".into(), "key_t1".into(), Some("req_test".into())),
                ("w".into(), "system".into(), Some("run_1".into())),
                ("x".into(), "system".into(), Some("run_1".into())),
                ("y".into(), "system".into(), Some("run_1".into())),
            ]
        );
        let events = store.list_events("t1", &EventQuery { limit: 100, ..EventQuery::default() }).await.unwrap();
        assert_eq!(events.iter().filter(|e| e.kind == "record.archived").count(), 4);
    })
    .await;
}

/// Counts and cursors in every scope, beside records of every other kind and another
/// tenant's: walked in pages of 5 to the end, in three orders, a list gives each of its
/// records once and in order, and every page's total is the number of records the scope
/// holds. (The count of `include=archived` sums the current and the archived records, and
/// a cursor of `filter[archived]=true` continues inside the archived records only.)
#[tokio::test]
async fn counts_and_cursors_agree_with_each_scope_across_pages() {
    each_store(|store| async move {
        let sch = schema(SCHEMA);
        store.migrate(&sch).await.unwrap();
        let orders = coll(&sch, "orders");
        // By i % 4: current, archived, deleted, archived then deleted. Codes in another
        // order than ids, so that a field sort has its own cursor values.
        let code = |i: usize| format!("C{:02}", (i * 7) % 26);
        let mut kinds = Vec::new();
        for tenant in ["t1", "t2"] {
            let who = actor(tenant);
            let n = if tenant == "t1" { 26 } else { 8 };
            for i in 0..n {
                let id = format!("r{i:02}");
                create(&store, &orders, tenant, &id, values(&[("code", s(&code(i)))]), at(0)).await;
                let (archived, deleted) = (i % 4 == 1 || i % 4 == 3, i % 4 >= 2);
                if archived {
                    store.archive_record(&who, &orders, &id, archive("r"), None, at(SECOND)).await.unwrap();
                }
                if deleted {
                    soft_delete(&store, &orders, tenant, &id, at(2 * SECOND)).await;
                }
                if tenant == "t1" {
                    kinds.push((id, code(i), archived, deleted));
                }
            }
        }

        use ArchivedScope::{Exclude, Include, Only};
        use DeletedScope::{Active, All, Deleted};
        let sorts = [
            Sort { key: SortKey::Id, descending: false },
            Sort { key: SortKey::Id, descending: true },
            Sort { key: SortKey::Field("code".into()), descending: false },
        ];
        for scope in [Active, All, Deleted] {
            for archived in [Exclude, Include, Only] {
                let wanted = |a: bool, d: bool| {
                    let by_deletion = match scope {
                        Active => !d,
                        All => true,
                        Deleted => d,
                    };
                    let by_archive = match archived {
                        Exclude => !a,
                        Include => true,
                        Only => a,
                    };
                    by_deletion && by_archive
                };
                let rows: Vec<&(String, String, bool, bool)> =
                    kinds.iter().filter(|(_, _, a, d)| wanted(*a, *d)).collect();
                for sort in &sorts {
                    let mut expected: Vec<(String, String)> =
                        rows.iter().map(|(id, c, _, _)| (id.clone(), c.clone())).collect();
                    match (&sort.key, sort.descending) {
                        (SortKey::Id, false) => expected.sort(),
                        (SortKey::Id, true) => expected.sort_by(|a, b| b.cmp(a)),
                        _ => expected.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0))),
                    }
                    let expected: Vec<String> = expected.into_iter().map(|(id, _)| id).collect();
                    let mut q = ListQuery {
                        scope,
                        archived,
                        sort: sort.clone(),
                        count: true,
                        limit: 5,
                        ..ListQuery::default()
                    };
                    let mut seen = Vec::new();
                    loop {
                        let page = store.list_records("t1", &orders, &q).await.unwrap();
                        let what = format!("{scope:?} {archived:?} {sort:?} after {:?}", q.after);
                        assert_eq!(page.total, Some(expected.len() as u64), "{what}");
                        assert!(page.items.len() <= 5, "{what}");
                        seen.extend(page.items.iter().map(|r| r.id.clone()));
                        match page.next {
                            Some(next) => q.after = Some(next),
                            None => break,
                        }
                    }
                    assert_eq!(seen, expected, "{scope:?} {archived:?} {sort:?}");
                }
            }
        }

        // A filter's parameter, used by both halves of the `include=archived` count.
        for (i, archived, total) in [(4, Include, 1), (5, Include, 1), (6, Include, 0), (5, Only, 1), (5, Exclude, 0)] {
            let q = ListQuery {
                archived,
                filters: vec![FieldFilter { field: "code".into(), value: s(&code(i)), case_insensitive: false }],
                count: true,
                ..ListQuery::default()
            };
            let page = store.list_records("t1", &orders, &q).await.unwrap();
            assert_eq!(page.total, Some(total), "code of r{i:02}, {archived:?}");
            assert_eq!(page.items.len() as u64, total, "code of r{i:02}, {archived:?}");
        }
        // And a search's candidates, as ids and as fingerprints.
        let ids = ["r00", "r01", "r02", "r03", "r04", "nope"].map(String::from).to_vec();
        let fps = Fingerprints::new(ids.iter().map(|id| fingerprint(id)).collect(), 10);
        for candidates in [Candidates::Ids(ids), Candidates::Fingerprints(Arc::new(fps))] {
            let q = ListQuery { archived: Include, candidates: Some(candidates), count: true, ..ListQuery::default() };
            let page = store.list_records("t1", &orders, &q).await.unwrap();
            assert_eq!(page.total, Some(3));
            assert_eq!(page.items.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["r00", "r01", "r04"]);
        }
    })
    .await;
}
