//! Retention: legal holds, `:purge`, purge batches and their pause, the purge preview, the
//! dashboard's counts, and erasure with its receipt and after-commit steps.

use std::collections::BTreeMap;

use tombstone_store::{CollectionCounts, ErasureStep, PurgeBatch, PurgeDue};

use super::*;

const NOTES: &str = r#"
[retention]
default = "1h"

[collections.notes.fields]
text = { type = "string" }

[collections.docs]
retention = "2h"

[collections.docs.fields]
text = { type = "string" }
"#;

#[tokio::test]
async fn holds_bump_the_version_set_the_flag_and_release_only_active_holds() {
    each_store(|store| async move {
        let sch = schema(NOTES);
        store.migrate(&sch).await.unwrap();
        let notes = coll(&sch, "notes");
        let who = actor("t1");
        create(&store, &notes, "t1", "n", values(&[("text", s("x"))]), at(0)).await;

        let h1 =
            store.place_hold(&who, &notes, "n", Some("case-7".into()), Some("litigation".into()), at(1)).await.unwrap();
        assert_eq!(
            (h1.case.as_deref(), h1.reason.as_deref(), h1.actor.as_str(), h1.at),
            (Some("case-7"), Some("litigation"), "key_t1", at(1))
        );
        let n = must_get(&store, &notes, "t1", "n").await;
        assert!(n.legal_hold && n.version == 2 && n.updated_at == at(1), "{n:?}");
        let h2 = store.place_hold(&who, &notes, "n", None, None, at(2)).await.unwrap();
        assert_ne!(h1.hold_id, h2.hold_id);
        assert_eq!(must_get(&store, &notes, "t1", "n").await.version, 3);
        let ids = vec!["n".to_string(), "other".to_string()];
        let holds = store.active_holds("t1", "notes", &ids).await.unwrap();
        assert_eq!(holds.get("n"), Some(&vec![h1.clone(), h2.clone()]), "oldest first");
        assert!(holds.get("other").is_none_or(Vec::is_empty));
        assert!(store.active_holds("t2", "notes", &ids).await.unwrap().values().all(Vec::is_empty), "tenants");

        // Releasing one of two holds leaves the record held.
        let r = store.release_hold(&who, &notes, "n", &h1.hold_id, Some("settled".into()), at(3)).await.unwrap();
        assert!(r.legal_hold && r.version == 4 && r.updated_at == at(3), "{r:?}");
        assert_eq!(must_get(&store, &notes, "t1", "n").await, r);
        assert_eq!(store.active_holds("t1", "notes", &ids).await.unwrap().get("n"), Some(&vec![h2.clone()]));
        // A released hold, an unknown one, another tenant's record, another record's hold:
        // not found, and nothing changes.
        create(&store, &notes, "t1", "m", Values::new(), at(3)).await;
        for (tenant, id, hold) in [
            ("t1", "n", h1.hold_id.as_str()),
            ("t1", "n", "hold_nope"),
            ("t2", "n", h2.hold_id.as_str()),
            ("t1", "m", h2.hold_id.as_str()),
        ] {
            let r = store.release_hold(&actor(tenant), &notes, id, hold, None, at(4)).await;
            assert!(matches!(r, Err(StoreError::NotFound)), "{tenant}/{id}/{hold}: {r:?}");
        }
        assert_eq!(must_get(&store, &notes, "t1", "m").await.version, 1);
        assert_eq!(must_get(&store, &notes, "t1", "n").await.version, 4);
        let r = store.release_hold(&who, &notes, "n", &h2.hold_id, None, at(5)).await.unwrap();
        assert!(!r.legal_hold && r.version == 5, "{r:?}");
        let r = store.place_hold(&who, &notes, "missing", None, None, at(6)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        let r = store.place_hold(&actor("t2"), &notes, "n", None, None, at(6)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");

        // Each hold and release is audited with its hold and case, and announced as an update.
        let audit: Vec<AuditEntry> =
            audit_of(&store, "t1").await.into_iter().filter(|e| e.action == "hold" || e.action == "release").collect();
        type Summary<'a> = (&'a str, Option<i64>, Option<&'a str>, Option<&'a str>, Option<&'a str>);
        let summary: Vec<Summary<'_>> = audit
            .iter()
            .map(|e| (e.action.as_str(), e.version, e.hold_id.as_deref(), e.case.as_deref(), e.reason.as_deref()))
            .collect();
        assert_eq!(
            summary,
            [
                ("hold", Some(2), Some(h1.hold_id.as_str()), Some("case-7"), Some("litigation")),
                ("hold", Some(3), Some(h2.hold_id.as_str()), None, None),
                ("release", Some(4), Some(h1.hold_id.as_str()), Some("case-7"), Some("settled")),
                ("release", Some(5), Some(h2.hold_id.as_str()), None, None),
            ]
        );
        let updates: Vec<Option<i64>> =
            events_of(&store, "t1").await.iter().filter(|e| e.kind == "record.updated").map(|e| e.version).collect();
        assert_eq!(updates, [Some(2), Some(3), Some(4), Some(5)]);
        // A deleted record can be held too.
        soft_delete(&store, &notes, "t1", "n", at(7)).await;
        store.place_hold(&who, &notes, "n", None, None, at(8)).await.unwrap();
        assert!(must_get(&store, &notes, "t1", "n").await.legal_hold);
    })
    .await;
}

#[tokio::test]
async fn purge_record_removes_only_a_deleted_unheld_record() {
    each_store(|store| async move {
        let sch = schema(NOTES);
        store.migrate(&sch).await.unwrap();
        let notes = coll(&sch, "notes");
        let who = actor("t1");
        create(&store, &notes, "t1", "live", values(&[("text", s("a"))]), at(0)).await;
        create(&store, &notes, "t1", "gone", values(&[("text", s("b"))]), at(0)).await;
        create(&store, &notes, "t1", "held", values(&[("text", s("c"))]), at(0)).await;
        let r = store.purge_record(&who, &notes, "live", None, at(1)).await;
        assert!(matches!(r, Err(StoreError::NotDeleted)), "{r:?}");
        let r = store.purge_record(&who, &notes, "missing", None, at(1)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        let deletion_id = soft_delete(&store, &notes, "t1", "gone", at(2)).await;
        let r = store.purge_record(&actor("t2"), &notes, "gone", None, at(3)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "another tenant's: {r:?}");
        store.set_purge_paused(true).await.unwrap();
        store.purge_record(&who, &notes, "gone", Some("asked".into()), at(3)).await.expect(":purge ignores the pause");
        assert_eq!(get(&store, &notes, "t1", "gone").await, None);
        let r = store.purge_record(&who, &notes, "gone", None, at(4)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");

        let entry = audit_of(&store, "t1").await.into_iter().find(|e| e.action == "purge").expect("purge audited");
        assert_eq!(
            (entry.record_id.as_deref(), entry.version, entry.deletion_id.as_deref(), entry.reason.as_deref()),
            (Some("gone"), Some(2), Some(deletion_id.as_str()), Some("asked"))
        );
        let event =
            events_of(&store, "t1").await.into_iter().find(|e| e.kind == "record.purged").expect("purge announced");
        assert_eq!((event.record_id.as_str(), event.data.as_ref()), ("gone", None), "a purged record has no data");

        // A held record is never purged, deleted or not.
        store.place_hold(&who, &notes, "held", None, None, at(5)).await.unwrap();
        soft_delete(&store, &notes, "t1", "held", at(6)).await;
        let r = store.purge_record(&who, &notes, "held", None, at(7)).await;
        assert!(matches!(r, Err(StoreError::LegalHold)), "{r:?}");
        assert!(get(&store, &notes, "t1", "held").await.is_some());
    })
    .await;
}

#[tokio::test]
async fn purge_batches_take_due_unheld_records_oldest_first_and_obey_the_pause() {
    each_store(|store| async move {
        let sch = schema(NOTES);
        store.migrate(&sch).await.unwrap();
        let notes = coll(&sch, "notes");
        for id in ["n1", "n2", "n3", "n4", "n5", "n6"] {
            create(&store, &notes, "t1", id, values(&[("text", s(id))]), at(0)).await;
        }
        create(&store, &notes, "t2", "n1", values(&[("text", s("t2"))]), at(0)).await;
        // Due at 1 h after their delete: n1..n4 (n4 held) and t2's n1; n5 later; n6 active.
        for (i, id) in ["n1", "n2", "n3", "n4"].iter().enumerate() {
            soft_delete(&store, &notes, "t1", id, at(10 + i as i64)).await;
        }
        soft_delete(&store, &notes, "t2", "n1", at(15)).await;
        soft_delete(&store, &notes, "t1", "n5", at(3 * HOUR)).await;
        store.place_hold(&actor("t1"), &notes, "n4", None, None, at(20)).await.unwrap();
        let now = at(HOUR + 100);
        let horizon = at(5 * HOUR);

        let due = store.purge_due(Some("t1"), std::slice::from_ref(&notes), now, horizon).await.unwrap();
        assert_eq!(
            due,
            [PurgeDue {
                collection: "notes".into(),
                due_now: 3,
                sample: vec!["n1".into(), "n2".into(), "n3".into()],
                due_soon: 1,
                held: 1
            }]
        );
        let everyone = store.purge_due(None, std::slice::from_ref(&notes), now, horizon).await.unwrap();
        assert_eq!((everyone[0].due_now, everyone[0].sample.len()), (4, 4));
        let short = store.purge_due(Some("t1"), std::slice::from_ref(&notes), now, at(2 * HOUR)).await.unwrap();
        assert_eq!(short[0].due_soon, 0, "n5 comes due after this horizon");
        let counts = store.collection_counts("t1", std::slice::from_ref(&notes), now).await.unwrap();
        assert_eq!(
            counts,
            [CollectionCounts { collection: "notes".into(), active: 1, archived: 0, deleted: 5, expiring: 3, held: 1 }]
        );

        // Paused: nothing goes.
        assert!(!store.purge_paused().await.unwrap());
        store.set_purge_paused(true).await.unwrap();
        assert!(store.purge_paused().await.unwrap());
        let batch = store.purge_batch(&notes, now, 10, "run_paused").await.unwrap();
        assert_eq!(batch, PurgeBatch { purged: 0, paused: true });
        assert!(get(&store, &notes, "t1", "n1").await.is_some());
        store.set_purge_paused(false).await.unwrap();
        assert!(!store.purge_paused().await.unwrap());

        // Oldest purge_at first, at most `limit` each.
        let batch = store.purge_batch(&notes, now, 2, "run_1").await.unwrap();
        assert_eq!(batch, PurgeBatch { purged: 2, paused: false });
        assert_eq!((get(&store, &notes, "t1", "n1").await, get(&store, &notes, "t1", "n2").await), (None, None));
        assert!(get(&store, &notes, "t1", "n3").await.is_some());
        let batch = store.purge_batch(&notes, now, 2, "run_2").await.unwrap();
        assert_eq!(batch.purged, 2);
        assert_eq!(get(&store, &notes, "t1", "n3").await, None);
        assert_eq!(get(&store, &notes, "t2", "n1").await, None);
        assert_eq!(store.purge_batch(&notes, now, 2, "run_3").await.unwrap().purged, 0, "n4 is held, n5 not due");
        assert!(get(&store, &notes, "t1", "n4").await.is_some());
        assert!(get(&store, &notes, "t1", "n5").await.is_some());
        assert!(get(&store, &notes, "t1", "n6").await.is_some());

        let purged: Vec<(String, Option<String>)> = audit_of(&store, "t1")
            .await
            .into_iter()
            .filter(|e| e.action == "purge")
            .map(|e| (e.record_id.unwrap_or_default(), e.request_id))
            .collect();
        assert_eq!(
            purged,
            [
                ("n1".to_string(), Some("run_1".to_string())),
                ("n2".to_string(), Some("run_1".to_string())),
                ("n3".to_string(), Some("run_2".to_string())),
            ]
        );
        let events: Vec<String> = events_of(&store, "t1")
            .await
            .into_iter()
            .filter(|e| e.kind == "record.purged")
            .map(|e| e.record_id)
            .collect();
        assert_eq!(events, ["n1", "n2", "n3"]);

        // Released, the held record goes with the next batch.
        let hold = store.active_holds("t1", "notes", &["n4".to_string()]).await.unwrap()["n4"][0].hold_id.clone();
        store.release_hold(&actor("t1"), &notes, "n4", &hold, None, now).await.unwrap();
        assert_eq!(store.purge_batch(&notes, now, 10, "run_4").await.unwrap().purged, 1);
        assert_eq!(get(&store, &notes, "t1", "n4").await, None);
    })
    .await;
}

#[tokio::test]
async fn collection_counts_are_per_tenant_and_per_collection() {
    each_store(|store| async move {
        let sch = schema(NOTES);
        store.migrate(&sch).await.unwrap();
        let (notes, docs) = (coll(&sch, "notes"), coll(&sch, "docs"));
        for id in ["a", "b", "c"] {
            create(&store, &notes, "t1", id, Values::new(), at(0)).await;
            create(&store, &docs, "t1", id, Values::new(), at(0)).await;
        }
        create(&store, &notes, "t2", "z", Values::new(), at(0)).await;
        soft_delete(&store, &notes, "t1", "a", at(1)).await;
        soft_delete(&store, &docs, "t1", "a", at(1)).await;
        soft_delete(&store, &docs, "t1", "b", at(1)).await;
        store.place_hold(&actor("t1"), &docs, "c", None, None, at(2)).await.unwrap();
        // An hour and a half: the notes' window is over, the docs' two hours are not.
        let got = store.collection_counts("t1", &[notes.clone(), docs.clone()], at(90 * 60 * SECOND)).await.unwrap();
        assert_eq!(
            got,
            [
                CollectionCounts {
                    collection: "notes".into(),
                    active: 2,
                    archived: 0,
                    deleted: 1,
                    expiring: 1,
                    held: 0
                },
                CollectionCounts {
                    collection: "docs".into(),
                    active: 1,
                    archived: 0,
                    deleted: 2,
                    expiring: 0,
                    held: 1
                },
            ]
        );
        let got = store.collection_counts("t2", &[notes, docs], at(0)).await.unwrap();
        assert_eq!((got[0].active, got[0].deleted, got[1].active), (1, 0, 0));
    })
    .await;
}

const PEOPLE_AND_CARTS: &str = r#"
[collections.customers.fields]
email = { type = "string", pii = true }
name  = { type = "string", search = true }

[collections.carts.fields]
item        = { type = "string" }
customer_id = { type = "ref", collection = "customers", on_delete = "cascade" }

[collections.invoices.fields]
total       = { type = "integer" }
customer_id = { type = "ref", collection = "customers", on_delete = "restrict" }

[collections.reviews.fields]
text        = { type = "string" }
customer_id = { type = "ref", collection = "customers", on_delete = "orphan" }
"#;

#[tokio::test]
async fn erasure_removes_every_stored_copy_and_keeps_a_receipt() {
    each_store(|store| async move {
        let sch = schema(PEOPLE_AND_CARTS);
        store.migrate(&sch).await.unwrap();
        let (customers, carts, reviews) = (coll(&sch, "customers"), coll(&sch, "carts"), coll(&sch, "reviews"));
        let who = actor("t1");
        // Created under an idempotency key: its stored response names the record.
        let k = idem("t1", "key_t1", "create-c1");
        assert_eq!(store.claim_idempotency(&k, "fp", at(0)).await.unwrap(), IdempotencyClaim::Claimed);
        let c1 = new_record("t1", &customers, "c1", values(&[("email", s("ann@x")), ("name", s("Ann"))]), at(0));
        store.create_record(&who, &customers, c1, Some((k.clone(), response("c1")))).await.unwrap();
        store.patch_record(&who, &customers, "c1", None, patch(json!({"name": "Anne"})), at(1)).await.unwrap();
        create(&store, &carts, "t1", "k1", values(&[("item", s("mug")), ("customer_id", reference("c1"))]), at(2))
            .await;
        create(&store, &carts, "t1", "k2", values(&[("item", s("cup")), ("customer_id", reference("c1"))]), at(3))
            .await;
        create(&store, &reviews, "t1", "r1", values(&[("text", s("ok")), ("customer_id", reference("c1"))]), at(4))
            .await;
        // A cart item already in the trash is still the customer's data.
        soft_delete(&store, &carts, "t1", "k2", at(5)).await;
        // The same id in another tenant is someone else.
        create(&store, &customers, "t2", "c1", values(&[("email", s("bob@x"))]), at(6)).await;
        let audit_before = audit_of(&store, "t1").await.len();
        let erased = ["c1", "k1", "k2"];
        let with_data = events_of(&store, "t1")
            .await
            .iter()
            .filter(|e| erased.contains(&e.record_id.as_str()) && e.data.is_some())
            .count() as u64;
        assert!(with_data >= 5, "c1: created, updated; k1: created; k2: created, deleted");

        let receipt = store.erase_record(&who, &customers, "c1", Some("gdpr".into()), at(10)).await.unwrap();
        assert_eq!((receipt.collection.as_str(), receipt.id.as_str(), receipt.erased_at), ("customers", "c1", at(10)));
        assert_eq!(receipt.counts, BTreeMap::from([("carts".to_string(), 2), ("customers".to_string(), 1)]));
        assert_eq!(receipt.idempotent_responses, 1);
        assert_eq!(receipt.events, with_data, "every stored event that carried a value");
        assert!(receipt.pending.contains(&ErasureStep::Search), "a searchable collection: {:?}", receipt.pending);

        // The rows are gone, the orphan stays, the other tenant's c1 is untouched.
        assert_eq!(get(&store, &customers, "t1", "c1").await, None);
        assert_eq!(get(&store, &carts, "t1", "k1").await, None);
        assert_eq!(get(&store, &carts, "t1", "k2").await, None);
        assert_eq!(must_get(&store, &reviews, "t1", "r1").await.values["customer_id"], reference("c1"));
        assert_eq!(must_get(&store, &customers, "t2", "c1").await.values["email"], s("bob@x"));
        assert!(store.is_erased("t1", "customers", "c1").await.unwrap());
        assert!(store.is_erased("t1", "carts", "k2").await.unwrap());
        assert!(!store.is_erased("t2", "customers", "c1").await.unwrap());
        assert!(!store.is_erased("t1", "reviews", "r1").await.unwrap());

        // No stored event of an erased record carries a value any more.
        for e in events_of(&store, "t1").await.iter().filter(|e| erased.contains(&e.record_id.as_str())) {
            assert_eq!(e.data, None, "{} of {} kept its data", e.kind, e.record_id);
        }
        let kinds: Vec<String> = events_of(&store, "t1")
            .await
            .into_iter()
            .filter(|e| e.kind == "record.erased")
            .map(|e| format!("{}/{}", e.collection, e.record_id))
            .collect();
        assert_eq!(sorted(kinds), ["carts/k1", "carts/k2", "customers/c1"]);
        // The replay of the create answers without the record's values.
        match store.claim_idempotency(&k, "fp", at(11)).await.unwrap() {
            IdempotencyClaim::Replay(r) => {
                assert!(!r.body.contains("c1") && r.headers.is_empty(), "{r:?}");
                assert_eq!(r.record, Some(("customers".into(), "c1".into())));
            }
            other => panic!("{other:?}"),
        }
        // One `erase` entry per record, and the chain still verifies.
        let audit = audit_of(&store, "t1").await;
        let erases: Vec<String> = audit[audit_before..]
            .iter()
            .map(|e| format!("{} {}/{}", e.action, e.collection.clone().unwrap(), e.record_id.clone().unwrap()))
            .collect();
        assert_eq!(sorted(erases), ["erase carts/k1", "erase carts/k2", "erase customers/c1"]);
        assert!(matches!(store.verify_audit().await.unwrap(), Ok(n) if n as usize >= audit.len()));

        // A retry finds nothing to erase, and the receipt as it was.
        let r = store.erase_record(&who, &customers, "c1", Some("gdpr".into()), at(20)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        assert_eq!(audit_of(&store, "t1").await.len(), audit.len(), "a retry erases nothing again");
        let stored = store.erasure_receipt("t1", "customers", "c1").await.unwrap().expect("a receipt");
        assert_eq!(
            (stored.erased_at, stored.audit_seq, stored.events, stored.idempotent_responses, &stored.counts),
            (receipt.erased_at, receipt.audit_seq, receipt.events, receipt.idempotent_responses, &receipt.counts)
        );
        assert_eq!(store.erasure_receipt("t1", "customers", "nope").await.unwrap(), None);
        assert_eq!(store.erasure_receipt("t2", "customers", "c1").await.unwrap(), None);

        // The after-commit steps: the index's copy, then the WAL's.
        let seqs = store.pending_erasure_searches().await.unwrap();
        let erased_seq = events_of(&store, "t1")
            .await
            .into_iter()
            .find(|e| e.kind == "record.erased" && e.record_id == "c1")
            .map(|e| e.seq)
            .unwrap();
        assert!(seqs.contains(&erased_seq), "{seqs:?} lacks {erased_seq}");
        assert_eq!(store.finish_erasure_searches(erased_seq - 1).await.unwrap(), 0);
        assert!(store.finish_erasure_searches(erased_seq).await.unwrap() >= 1);
        assert!(store.pending_erasure_searches().await.unwrap().is_empty());
        store.finish_erasure_wal(std::time::Duration::from_secs(5)).await.unwrap();
        let stored = store.erasure_receipt("t1", "customers", "c1").await.unwrap().unwrap();
        assert!(stored.pending.is_empty(), "every copy is gone: {:?}", stored.pending);
        assert_eq!(store.finish_erasure_wal(std::time::Duration::from_secs(5)).await.unwrap(), 0, "nothing left");
    })
    .await;
}

#[tokio::test]
async fn erasure_is_refused_by_a_restrict_or_a_hold_and_then_erases_nothing() {
    each_store(|store| async move {
        let sch = schema(PEOPLE_AND_CARTS);
        store.migrate(&sch).await.unwrap();
        let (customers, carts, invoices) = (coll(&sch, "customers"), coll(&sch, "carts"), coll(&sch, "invoices"));
        let who = actor("t1");
        create(&store, &customers, "t1", "c1", values(&[("email", s("a@x"))]), at(0)).await;
        create(&store, &invoices, "t1", "i1", values(&[("customer_id", reference("c1"))]), at(1)).await;
        let r = store.erase_record(&who, &customers, "c1", None, at(2)).await;
        assert!(
            matches!(&r, Err(StoreError::Restrict { blockers, total: 1 }) if blockers == &[rr("invoices", "i1")]),
            "{r:?}"
        );
        assert!(get(&store, &customers, "t1", "c1").await.is_some());
        assert!(!store.is_erased("t1", "customers", "c1").await.unwrap());

        create(&store, &customers, "t1", "c2", values(&[("email", s("b@x"))]), at(3)).await;
        create(&store, &carts, "t1", "k", values(&[("customer_id", reference("c2"))]), at(4)).await;
        store.place_hold(&who, &carts, "k", None, None, at(5)).await.unwrap();
        let r = store.erase_record(&who, &customers, "c2", None, at(6)).await;
        assert!(matches!(r, Err(StoreError::LegalHold)), "a held cascade child: {r:?}");
        assert!(get(&store, &customers, "t1", "c2").await.is_some());
        assert!(get(&store, &carts, "t1", "k").await.is_some());
        let data: Vec<bool> = events_of(&store, "t1")
            .await
            .iter()
            .filter(|e| e.record_id == "c2" && e.kind == "record.created")
            .map(|e| e.data.is_some())
            .collect();
        assert_eq!(data, [true], "a refused erasure scrubs nothing");

        create(&store, &customers, "t1", "c3", values(&[("email", s("c@x"))]), at(7)).await;
        store.place_hold(&who, &customers, "c3", None, None, at(8)).await.unwrap();
        let r = store.erase_record(&who, &customers, "c3", None, at(9)).await;
        assert!(matches!(r, Err(StoreError::LegalHold)), "{r:?}");
        let r = store.erase_record(&who, &customers, "nope", None, at(9)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        let r = store.erase_record(&actor("t2"), &customers, "c1", None, at(9)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        assert!(store.pending_erasure_searches().await.unwrap().is_empty());
    })
    .await;
}
