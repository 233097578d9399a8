//! Archive (SPEC §17): `archive_record` (set, clear, unchanged, preconditions, deleted
//! records), what lists and counts see of archived records, a patch of an archived record,
//! and `archive_batch` (the `archive_after` pass: stale records only, oldest first, at
//! most `limit`, each audited and announced as `system`).

use tombstone_domain::lifecycle::ArchiveRequest;
use tombstone_domain::query::ArchivedScope;

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
