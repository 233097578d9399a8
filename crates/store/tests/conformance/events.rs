//! What happened: the outbox as the event feed, the live streams and the indexer read it,
//! the wake-up of its followers, and the audit log with its hash chain.

use std::time::Duration;

use super::*;

const TWO: &str = r#"
[retention]
default = "1h"

[collections.customers.fields]
name = { type = "string" }

[collections.products.fields]
sku = { type = "string" }
"#;

/// `kind collection/id` of each event, in the order given.
fn summary(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| format!("{} {}/{}", e.kind, e.collection, e.record_id)).collect()
}

/// A few writes in two tenants and two collections.
async fn some_writes(store: &Arc<dyn Store>, sch: &Schema) {
    let (customers, products) = (coll(sch, "customers"), coll(sch, "products"));
    create(store, &customers, "t1", "a", values(&[("name", s("Ann"))]), at(1)).await;
    create(store, &customers, "t2", "a", values(&[("name", s("Other Ann"))]), at(2)).await;
    create(store, &products, "t1", "p", values(&[("sku", s("P"))]), at(3)).await;
    store.patch_record(&actor("t1"), &customers, "a", None, patch(json!({"name": "Anne"})), at(4)).await.unwrap();
    delete_as(store, &customers, "t1", "a", "del_a", at(5)).await.unwrap();
    store.restore_record(&actor("t1"), &customers, "a", None, None, at(6)).await.unwrap();
    create(store, &products, "t2", "q", values(&[("sku", s("Q"))]), at(7)).await;
}

#[tokio::test]
async fn the_event_feed_is_per_tenant_in_commit_order_with_filters() {
    each_store(|store| async move {
        assert_eq!(store.last_event_seq().await.unwrap(), 0, "an empty outbox");
        let sch = schema(TWO);
        store.migrate(&sch).await.unwrap();
        some_writes(&store, &sch).await;

        let t1 = events_of(&store, "t1").await;
        assert_eq!(
            summary(&t1),
            [
                "record.created customers/a",
                "record.created products/p",
                "record.updated customers/a",
                "record.deleted customers/a",
                "deletion.completed customers/a",
                "record.restored customers/a",
            ]
        );
        assert!(t1.iter().all(|e| e.tenant == "t1"));
        assert!(t1.windows(2).all(|w| w[0].seq < w[1].seq), "seqs increase");
        let distinct: std::collections::HashSet<&str> = t1.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(distinct.len(), t1.len(), "event ids are unique");
        // Each event says what changed, when, by which request, and (but for completion) at
        // which version, with the record's values.
        let versions: Vec<Option<i64>> = t1.iter().map(|e| e.version).collect();
        assert_eq!(versions, [Some(1), Some(1), Some(2), Some(3), None, Some(4)]);
        let times: Vec<Timestamp> = t1.iter().map(|e| e.occurred_at).collect();
        assert_eq!(times, [at(1), at(3), at(4), at(5), at(5), at(6)]);
        assert!(t1.iter().all(|e| e.request_id.as_deref() == Some("req_test")), "{t1:?}");
        assert_eq!(t1[3].deletion_id.as_deref(), Some("del_a"));
        assert_eq!(t1[4].deletion_id.as_deref(), Some("del_a"));
        assert_eq!(t1[2].data.as_ref().and_then(|d| d.get("name")), Some(&json!("Anne")));

        // Every tenant, in one order; the newest seq.
        let all = store.list_all_events(&EventQuery { limit: 100, ..EventQuery::default() }).await.unwrap();
        assert_eq!(all.len(), t1.len() + 2);
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(
            summary(&all.iter().filter(|e| e.tenant == "t2").cloned().collect::<Vec<_>>()),
            ["record.created customers/a", "record.created products/q"]
        );
        assert_eq!(store.last_event_seq().await.unwrap(), all.last().unwrap().seq);

        // Filters: collection, types, after, limit.
        let q = |f: fn(&mut EventQuery)| {
            let mut q = EventQuery { limit: 100, ..EventQuery::default() };
            f(&mut q);
            q
        };
        let got = store.list_events("t1", &q(|q| q.collection = Some("products".into()))).await.unwrap();
        assert_eq!(summary(&got), ["record.created products/p"]);
        let got = store
            .list_events("t1", &q(|q| q.types = vec!["record.deleted".into(), "record.restored".into()]))
            .await
            .unwrap();
        assert_eq!(summary(&got), ["record.deleted customers/a", "record.restored customers/a"]);
        let after = t1[2].seq;
        let got = store.list_events("t1", &EventQuery { after, limit: 2, ..EventQuery::default() }).await.unwrap();
        assert_eq!(got, t1[3..5].to_vec(), "after a seq, at most limit");
        let got = store.list_all_events(&EventQuery { after: all[1].seq, limit: 3, ..EventQuery::default() }).await;
        assert_eq!(got.unwrap(), all[2..5].to_vec());
        let got = store.list_events("t3", &q(|_| {})).await.unwrap();
        assert!(got.is_empty(), "{got:?}");
    })
    .await;
}

#[tokio::test]
async fn changes_since_names_each_changed_record_of_every_tenant() {
    each_store(|store| async move {
        let sch = schema(TWO);
        store.migrate(&sch).await.unwrap();
        some_writes(&store, &sch).await;
        let all = store.list_all_events(&EventQuery { limit: 100, ..EventQuery::default() }).await.unwrap();
        let changes = store.changes_since(0, 100).await.unwrap();
        let expected: Vec<(i64, (String, String, String), String)> = all
            .iter()
            .map(|e| (e.seq, (e.tenant.clone(), e.collection.clone(), e.record_id.clone()), e.kind.clone()))
            .collect();
        assert_eq!(changes, expected);
        assert_eq!(store.changes_since(all[3].seq, 2).await.unwrap(), expected[4..6].to_vec());
        assert!(store.changes_since(all.last().unwrap().seq, 100).await.unwrap().is_empty());
    })
    .await;
}

/// Waits (boundedly: this is no timing assertion) for a wake-up the write before it
/// must already have sent.
async fn woken(notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), notified)
        .await
        .unwrap_or_else(|_| panic!("followers were not woken after {what}"));
}

#[tokio::test]
async fn followers_are_woken_after_each_committed_write_that_wrote_events() {
    each_store(|store| async move {
        let sch = schema(TWO);
        store.migrate(&sch).await.unwrap();
        let customers = coll(&sch, "customers");
        let changes = store.changes();

        let notified = changes.notified();
        tokio::pin!(notified);
        create(&store, &customers, "t1", "a", Values::new(), at(1)).await;
        woken(notified, "a create").await;
        // What the woken follower reads is committed.
        assert_eq!(events_of(&store, "t1").await.len(), 1);

        let notified = changes.notified();
        tokio::pin!(notified);
        store.patch_record(&actor("t1"), &customers, "a", None, patch(json!({"name": "x"})), at(2)).await.unwrap();
        woken(notified, "a patch").await;

        let notified = changes.notified();
        tokio::pin!(notified);
        soft_delete(&store, &customers, "t1", "a", at(3)).await;
        woken(notified, "a delete").await;

        // Background work too: a purge batch.
        let notified = changes.notified();
        tokio::pin!(notified);
        let batch = store.purge_batch(&customers, at(3 + 2 * HOUR), 10, "run").await.unwrap();
        assert_eq!(batch.purged, 1);
        woken(notified, "a purge batch").await;
    })
    .await;
}

#[tokio::test]
async fn the_audit_log_is_per_tenant_and_filtered() {
    each_store(|store| async move {
        let sch = schema(TWO);
        store.migrate(&sch).await.unwrap();
        some_writes(&store, &sch).await;
        let other = Actor { key_id: "key_other".into(), ..actor("t1") };
        store
            .patch_record(&other, &coll(&sch, "products"), "p", None, patch(json!({"sku": "P2"})), at(8))
            .await
            .unwrap();

        let t1 = audit_of(&store, "t1").await;
        let actions: Vec<String> =
            t1.iter().map(|e| format!("{} {:?}/{:?} v{:?}", e.action, e.collection, e.record_id, e.version)).collect();
        let expected: Vec<String> = [
            ("create", "customers", "a", 1),
            ("create", "products", "p", 1),
            ("update", "customers", "a", 2),
            ("delete", "customers", "a", 3),
            ("restore", "customers", "a", 4),
            ("update", "products", "p", 2),
        ]
        .iter()
        .map(|(a, c, id, v)| format!("{a} {:?}/{:?} v{:?}", Some(c), Some(id), Some(v)))
        .collect();
        assert_eq!(actions, expected);
        assert!(t1.iter().all(|e| e.tenant == "t1"));
        assert!(t1.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(t1[3].deletion_id.as_deref(), Some("del_a"));
        assert_eq!(t1[0].request_id.as_deref(), Some("req_test"));
        assert_eq!(t1[0].at, at(1));
        assert_eq!(audit_of(&store, "t2").await.len(), 2);
        assert!(audit_of(&store, "t3").await.is_empty());

        let list = |f: fn(&mut AuditQuery)| {
            let store = store.clone();
            async move {
                let mut q = AuditQuery { limit: 100, ..AuditQuery::default() };
                f(&mut q);
                let entries = store.list_audit("t1", &q).await.unwrap();
                entries.iter().map(|e| format!("{} {}", e.action, e.record_id.clone().unwrap_or_default())).collect()
            }
        };
        let got: Vec<String> = list(|q| q.collection = Some("products".into())).await;
        assert_eq!(got, ["create p", "update p"]);
        let got: Vec<String> = list(|q| q.record_id = Some("a".into())).await;
        assert_eq!(got, ["create a", "update a", "delete a", "restore a"]);
        let got: Vec<String> = list(|q| q.action = Some("update".into())).await;
        assert_eq!(got, ["update a", "update p"]);
        let got: Vec<String> = list(|q| q.actor = Some("key_other".into())).await;
        assert_eq!(got, ["update p"]);
        let got: Vec<String> = list(|q| q.since = Some(at(5))).await;
        assert_eq!(got, ["delete a", "restore a", "update p"]);
        let got: Vec<String> = list(|q| q.limit = 2).await;
        assert_eq!(got, ["create a", "create p"]);
        let after = t1[1].seq;
        let got = store.list_audit("t1", &AuditQuery { after: Some(after), limit: 2, ..AuditQuery::default() }).await;
        assert_eq!(got.unwrap(), t1[2..4].to_vec());
    })
    .await;
}

#[tokio::test]
async fn the_audit_chain_verifies_after_every_kind_of_write() {
    each_store(|store| async move {
        assert_eq!(store.verify_audit().await.unwrap(), Ok(0), "an empty chain");
        let sch = schema(TWO);
        store.migrate(&sch).await.unwrap();
        let customers = coll(&sch, "customers");
        some_writes(&store, &sch).await;
        let who = actor("t1");
        for i in 0..30 {
            let id = format!("c{i}");
            create(&store, &customers, "t1", &id, Values::new(), at(100 + i)).await;
            if i % 3 == 0 {
                soft_delete(&store, &customers, "t1", &id, at(200 + i)).await;
            }
        }
        let hold = store.place_hold(&who, &customers, "c1", None, None, at(300)).await.unwrap();
        store.release_hold(&who, &customers, "c1", &hold.hold_id, None, at(301)).await.unwrap();
        store.purge_record(&who, &customers, "c0", None, at(302)).await.unwrap();
        store.purge_batch(&customers, at(10 * HOUR), 5, "run").await.unwrap();
        store.erase_record(&who, &customers, "c2", None, at(303)).await.unwrap();
        store
            .create_key(
                StoredKey {
                    id: "key_x".into(),
                    tenant: "t1".into(),
                    name: None,
                    scopes: parse_scopes("admin").unwrap(),
                    secret_hash: "00".repeat(32),
                    created_at: at(304),
                },
                &who,
            )
            .await
            .unwrap();
        store.revoke_key("key_x", &who, at(305)).await.unwrap();

        let total = audit_of(&store, "t1").await.len() + audit_of(&store, "t2").await.len();
        assert_eq!(store.verify_audit().await.unwrap(), Ok(total as u64), "every entry of every tenant verifies");
        let actions: std::collections::BTreeSet<String> =
            audit_of(&store, "t1").await.into_iter().map(|e| e.action).collect();
        for a in
            ["create", "update", "delete", "restore", "hold", "release", "purge", "erase", "key_create", "key_revoke"]
        {
            assert!(actions.contains(a), "no {a} entry: {actions:?}");
        }
        // Each entry links to the one before it.
        let mut all = audit_of(&store, "t1").await;
        all.extend(audit_of(&store, "t2").await);
        all.sort_by_key(|e| e.seq);
        assert!(all.windows(2).all(|w| w[1].prev_hash == w[0].hash), "a fork or a gap in the chain");
    })
    .await;
}
