//! Deletion operations: the dry run's plan, cascades along every relation policy, the
//! operation and its records, its restore as a whole, eventual cascades and the trash.

use std::collections::BTreeMap;

use tombstone_domain::deletion::DeletionPlan;
use tombstone_store::{RecordsPage, RestoreConflict, TrashPosition, TrashQuery};

use super::*;

/// Every relation policy, one group of collections each.
pub(crate) const RELATIONS: &str = r#"
[retention]
default = "1h"

# restrict
[collections.categories.fields]
name = { type = "string" }

[collections.products]
unique = [["sku"]]

[collections.products.fields]
sku         = { type = "string", required = true }
category_id = { type = "ref", collection = "categories", on_delete = "restrict" }

# cascade, two levels, one of them into a hard-delete collection
[collections.authors.fields]
name = { type = "string" }

[collections.books]
unique = [["isbn"]]

[collections.books.fields]
isbn      = { type = "string" }
author_id = { type = "ref", collection = "authors", on_delete = "cascade" }

[collections.chapters]
retention = "30m"

[collections.chapters.fields]
title   = { type = "string" }
book_id = { type = "ref", collection = "books", on_delete = "cascade" }

[collections.drafts]
delete = "hard"

[collections.drafts.fields]
body      = { type = "string" }
author_id = { type = "ref", collection = "authors", on_delete = "cascade" }

# orphan
[collections.customers.fields]
name = { type = "string" }

[collections.orders.fields]
total       = { type = "integer" }
customer_id = { type = "ref", collection = "customers", on_delete = "orphan" }

# eventual, whose children cascade further
[collections.feeds.fields]
name = { type = "string" }

[collections.items.fields]
title   = { type = "string" }
feed_id = { type = "ref", collection = "feeds", on_delete = "eventual" }

[collections.item_tags.fields]
tag     = { type = "string" }
item_id = { type = "ref", collection = "items", on_delete = "cascade" }
"#;

/// The chapters' recovery window (shorter than everything else's hour).
const CHAPTER_WINDOW: i64 = 30 * 60 * SECOND;

/// Author `a1` with books `b1` (isbn I1) and `b2` (I2), chapters `c1` (of b1), `c2` and
/// `c3` (of b2), and draft `d1`, created at `at(0)`…`at(6)` in `tenant`.
async fn library(store: &Arc<dyn Store>, sch: &Schema, tenant: &str) {
    let (authors, books, chapters, drafts) =
        (coll(sch, "authors"), coll(sch, "books"), coll(sch, "chapters"), coll(sch, "drafts"));
    create(store, &authors, tenant, "a1", values(&[("name", s("Ann"))]), at(0)).await;
    create(store, &books, tenant, "b1", values(&[("isbn", s("I1")), ("author_id", reference("a1"))]), at(1)).await;
    create(store, &books, tenant, "b2", values(&[("isbn", s("I2")), ("author_id", reference("a1"))]), at(2)).await;
    create(store, &chapters, tenant, "c1", values(&[("title", s("One")), ("book_id", reference("b1"))]), at(3)).await;
    create(store, &chapters, tenant, "c2", values(&[("title", s("Two")), ("book_id", reference("b2"))]), at(4)).await;
    create(store, &chapters, tenant, "c3", values(&[("title", s("Six")), ("book_id", reference("b2"))]), at(5)).await;
    create(store, &drafts, tenant, "d1", values(&[("body", s("wip")), ("author_id", reference("a1"))]), at(6)).await;
}

fn library_refs() -> Vec<RecordRef> {
    refs_sorted(vec![
        rr("authors", "a1"),
        rr("books", "b1"),
        rr("books", "b2"),
        rr("chapters", "c1"),
        rr("chapters", "c2"),
        rr("chapters", "c3"),
        rr("drafts", "d1"),
    ])
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(c, n)| ((*c).to_string(), *n)).collect()
}

async fn plan_of(store: &Arc<dyn Store>, c: &Arc<Collection>, tenant: &str, id: &str) -> Option<DeletionPlan> {
    store.plan_deletion(&actor(tenant), c, id, at(1000)).await.expect("plan")
}

#[tokio::test]
async fn the_dry_run_plans_the_cascade_the_delete_then_carries_out() {
    each_store(|store| async move {
        let sch = schema(RELATIONS);
        store.migrate(&sch).await.unwrap();
        library(&store, &sch, "t1").await;
        let authors = coll(&sch, "authors");
        let events_before = events_of(&store, "t1").await.len();

        let plan = plan_of(&store, &authors, "t1", "a1").await.expect("a plan");
        assert_eq!(plan.root, Some(rr("authors", "a1")));
        assert_eq!(plan.immediate[0], rr("authors", "a1"), "the root comes first");
        assert_eq!(refs_sorted(plan.immediate.clone()), library_refs());
        assert!(plan.eventual.is_empty() && plan.eventual_edges.is_empty(), "{plan:?}");
        assert!(plan.blockers.is_empty() && plan.blockers_total == 0 && plan.orphaned.is_empty(), "{plan:?}");
        assert_eq!(plan.counts(), counts(&[("authors", 1), ("books", 2), ("chapters", 3), ("drafts", 1)]));
        // A dry run writes nothing.
        assert_eq!(must_get(&store, &authors, "t1", "a1").await.version, 1);
        assert_eq!(events_of(&store, "t1").await.len(), events_before);
        // No such record, or another tenant's: no plan.
        assert_eq!(plan_of(&store, &authors, "t1", "nope").await, None);
        assert_eq!(plan_of(&store, &authors, "t2", "a1").await, None);

        let mut req = delete_req("del_a1");
        req.reason = Some("retired".into());
        let out = store.delete_record(&actor("t1"), &authors, "a1", req, at(100)).await.unwrap();
        assert!(matches!(&out, DeleteOutcome::SoftDeleted { deletion_id, .. } if deletion_id == "del_a1"), "{out:?}");
        // Every soft child carries the root's deletion, with its own collection's window.
        for (c, id, window) in [
            ("authors", "a1", HOUR),
            ("books", "b1", HOUR),
            ("books", "b2", HOUR),
            ("chapters", "c1", CHAPTER_WINDOW),
            ("chapters", "c2", CHAPTER_WINDOW),
            ("chapters", "c3", CHAPTER_WINDOW),
        ] {
            let r = must_get(&store, &coll(&sch, c), "t1", id).await;
            let mark = r.deletion.as_ref().unwrap_or_else(|| panic!("{c}/{id} is not deleted"));
            assert_eq!(mark.deletion_id, "del_a1", "{c}/{id}");
            assert_eq!((mark.deleted_at, mark.purge_at), (at(100), at(100 + window)), "{c}/{id}");
            assert_eq!((mark.deleted_by.as_str(), mark.reason.as_deref()), ("key_t1", Some("retired")), "{c}/{id}");
            assert_eq!((r.version, r.updated_at), (2, at(100)), "{c}/{id}");
        }
        // The hard-delete child is gone.
        assert_eq!(get(&store, &coll(&sch, "drafts"), "t1", "d1").await, None);

        // One audit entry and one event per record, with the action of its mode.
        let audit = audit_of(&store, "t1").await;
        let of = |c: &str, id: &str| {
            audit
                .iter()
                .filter(|e| e.collection.as_deref() == Some(c) && e.record_id.as_deref() == Some(id))
                .filter(|e| e.deletion_id.as_deref() == Some("del_a1"))
                .map(|e| e.action.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(of("authors", "a1"), ["delete"]);
        assert_eq!(of("books", "b1"), ["cascade_delete"]);
        assert_eq!(of("chapters", "c3"), ["cascade_delete"]);
        assert_eq!(of("drafts", "d1"), ["purge"]);
        let events: Vec<Event> =
            events_of(&store, "t1").await.into_iter().filter(|e| e.deletion_id.as_deref() == Some("del_a1")).collect();
        let mut kinds: Vec<(String, String, String)> =
            events.iter().map(|e| (e.kind.clone(), e.collection.clone(), e.record_id.clone())).collect();
        kinds.sort();
        let expected: Vec<(String, String, String)> = [
            ("deletion.completed", "authors", "a1"),
            ("record.deleted", "authors", "a1"),
            ("record.deleted", "books", "b1"),
            ("record.deleted", "books", "b2"),
            ("record.deleted", "chapters", "c1"),
            ("record.deleted", "chapters", "c2"),
            ("record.deleted", "chapters", "c3"),
            ("record.purged", "drafts", "d1"),
        ]
        .iter()
        .map(|(k, c, i)| ((*k).to_string(), (*c).to_string(), (*i).to_string()))
        .collect();
        assert_eq!(kinds, expected);
        assert_eq!(events.last().map(|e| e.kind.as_str()), Some("deletion.completed"), "completed comes last");

        // An already deleted record plans nothing.
        let plan = plan_of(&store, &authors, "t1", "a1").await.expect("a plan of nothing");
        assert!(plan.immediate.is_empty() && plan.eventual.is_empty() && plan.blockers_total == 0, "{plan:?}");
    })
    .await;
}

#[tokio::test]
async fn a_restrict_blocks_the_delete_and_nothing_is_written() {
    each_store(|store| async move {
        let sch = schema(RELATIONS);
        store.migrate(&sch).await.unwrap();
        let (categories, products) = (coll(&sch, "categories"), coll(&sch, "products"));
        create(&store, &categories, "t1", "cat", values(&[("name", s("Mugs"))]), at(0)).await;
        for (i, id) in ["p1", "p2", "p3", "p4"].iter().enumerate() {
            let v = values(&[("sku", s(id)), ("category_id", reference("cat"))]);
            create(&store, &products, "t1", id, v, at(1 + i as i64)).await;
        }
        // A deleted child blocks nothing.
        soft_delete(&store, &products, "t1", "p4", at(10)).await;
        let audit_before = audit_of(&store, "t1").await.len();
        let events_before = events_of(&store, "t1").await.len();

        let plan = plan_of(&store, &categories, "t1", "cat").await.unwrap();
        assert_eq!(
            refs_sorted(plan.blockers.clone()),
            [rr("products", "p1"), rr("products", "p2"), rr("products", "p3")]
        );
        assert_eq!(plan.blockers_total, 3);
        assert!(plan.is_blocked());
        assert_eq!(plan.immediate, [rr("categories", "cat")]);

        let r = delete_as(&store, &categories, "t1", "cat", "del_cat", at(20)).await;
        match r {
            Err(StoreError::Restrict { blockers, total }) => {
                assert_eq!(total, 3);
                assert_eq!(refs_sorted(blockers), refs_sorted(plan.blockers.clone()));
            }
            other => panic!("expected a restrict, got {other:?}"),
        }
        let cat = must_get(&store, &categories, "t1", "cat").await;
        assert!(!cat.is_deleted() && cat.version == 1, "{cat:?}");
        assert_eq!(audit_of(&store, "t1").await.len(), audit_before, "a refused delete is not audited");
        assert_eq!(events_of(&store, "t1").await.len(), events_before, "a refused delete announces nothing");
        let page = RecordsPage { after: None, limit: 10 };
        assert_eq!(store.get_deletion("t1", "del_cat", &page).await.unwrap(), None, "no operation was recorded");

        // Once the blockers are gone, the delete goes through.
        for id in ["p1", "p2", "p3"] {
            soft_delete(&store, &products, "t1", id, at(30)).await;
        }
        assert!(delete_as(&store, &categories, "t1", "cat", "del_cat", at(40)).await.is_ok());
    })
    .await;
}

#[tokio::test]
async fn orphan_children_stay_active_and_keep_their_ref() {
    each_store(|store| async move {
        let sch = schema(RELATIONS);
        store.migrate(&sch).await.unwrap();
        let (customers, orders) = (coll(&sch, "customers"), coll(&sch, "orders"));
        create(&store, &customers, "t1", "cu", values(&[("name", s("Cy"))]), at(0)).await;
        for id in ["o1", "o2"] {
            let v = values(&[("total", FieldValue::Integer(5)), ("customer_id", reference("cu"))]);
            create(&store, &orders, "t1", id, v, at(1)).await;
        }
        let plan = plan_of(&store, &customers, "t1", "cu").await.unwrap();
        assert_eq!(plan.immediate, [rr("customers", "cu")]);
        assert_eq!(refs_sorted(plan.orphaned.clone()), [rr("orders", "o1"), rr("orders", "o2")]);
        assert!(!plan.is_blocked());
        delete_as(&store, &customers, "t1", "cu", "del_cu", at(10)).await.unwrap();
        for id in ["o1", "o2"] {
            let o = must_get(&store, &orders, "t1", id).await;
            assert!(!o.is_deleted() && o.version == 1, "{o:?}");
            assert_eq!(o.values["customer_id"], reference("cu"));
        }
        // An orphan's deleted parent does not keep it from coming back either.
        soft_delete(&store, &orders, "t1", "o1", at(11)).await;
        let r = store.restore_record(&actor("t1"), &orders, "o1", None, None, at(12)).await;
        assert!(matches!(r, Ok(RestoreOutcome::Restored(_))), "{r:?}");
    })
    .await;
}

#[tokio::test]
async fn a_legal_hold_refuses_a_hard_delete_and_a_cascade_that_reaches_one() {
    each_store(|store| async move {
        let sch = schema(RELATIONS);
        store.migrate(&sch).await.unwrap();
        let (authors, drafts) = (coll(&sch, "authors"), coll(&sch, "drafts"));
        let who = actor("t1");
        // A held record of a hard-delete collection.
        create(&store, &drafts, "t1", "solo", values(&[("body", s("x"))]), at(0)).await;
        store.place_hold(&who, &drafts, "solo", Some("case-1".into()), None, at(1)).await.unwrap();
        let r = store.plan_deletion(&who, &drafts, "solo", at(2)).await;
        assert!(matches!(r, Err(StoreError::LegalHold)), "the dry run answers like the delete: {r:?}");
        let r = delete_as(&store, &drafts, "t1", "solo", "del_solo", at(2)).await;
        assert!(matches!(r, Err(StoreError::LegalHold)), "{r:?}");
        assert!(get(&store, &drafts, "t1", "solo").await.is_some());

        // A cascade from a soft collection that reaches a held hard-collection record.
        create(&store, &authors, "t1", "a", values(&[("name", s("Al"))]), at(3)).await;
        create(&store, &drafts, "t1", "d", values(&[("author_id", reference("a"))]), at(4)).await;
        store.place_hold(&who, &drafts, "d", None, Some("audit".into()), at(5)).await.unwrap();
        let events_before = events_of(&store, "t1").await.len();
        let r = store.plan_deletion(&who, &authors, "a", at(6)).await;
        assert!(matches!(r, Err(StoreError::LegalHold)), "{r:?}");
        let r = delete_as(&store, &authors, "t1", "a", "del_a", at(6)).await;
        assert!(matches!(r, Err(StoreError::LegalHold)), "{r:?}");
        let a = must_get(&store, &authors, "t1", "a").await;
        assert!(!a.is_deleted() && a.version == 1, "nothing was written: {a:?}");
        assert!(get(&store, &drafts, "t1", "d").await.is_some());
        assert_eq!(events_of(&store, "t1").await.len(), events_before);
        let page = RecordsPage { after: None, limit: 10 };
        assert_eq!(store.get_deletion("t1", "del_a", &page).await.unwrap(), None);

        // A held record of a soft collection can be soft-deleted (it is only never purged).
        create(&store, &authors, "t1", "held", values(&[("name", s("H"))]), at(7)).await;
        store.place_hold(&who, &authors, "held", None, None, at(8)).await.unwrap();
        assert!(store.plan_deletion(&who, &authors, "held", at(9)).await.unwrap().is_some());
        soft_delete(&store, &authors, "t1", "held", at(9)).await;
    })
    .await;
}

#[tokio::test]
async fn a_deletion_operation_pages_its_records_and_counts_them() {
    each_store(|store| async move {
        let sch = schema(RELATIONS);
        store.migrate(&sch).await.unwrap();
        library(&store, &sch, "t1").await;
        let mut req = delete_req("del_a1");
        req.reason = Some("cleanup".into());
        store.delete_record(&actor("t1"), &coll(&sch, "authors"), "a1", req, at(100)).await.unwrap();

        for limit in [1_u32, 2, 3, 100] {
            let mut page = RecordsPage { after: None, limit };
            let mut seen: Vec<RecordRef> = Vec::new();
            let mut first = true;
            for _ in 0..100 {
                let op = store.get_deletion("t1", "del_a1", &page).await.unwrap().expect("the operation");
                assert!(op.records.len() <= limit as usize, "limit {limit}: {:?}", op.records);
                if first {
                    assert_eq!(op.id, "del_a1");
                    assert_eq!(op.status, "done");
                    assert_eq!((op.actor.as_str(), op.reason.as_deref()), ("key_t1", Some("cleanup")));
                    assert_eq!(op.created_at, at(100));
                    assert_eq!(op.root, rr("authors", "a1"));
                    assert_eq!(op.records[0], op.root, "the root comes first");
                    assert_eq!(op.records_total, 7);
                    assert_eq!(op.pending_relations, 0);
                    assert_eq!(op.counts, counts(&[("authors", 1), ("books", 2), ("chapters", 3), ("drafts", 1)]));
                    assert_eq!(op.restorable_until, Some(at(100 + CHAPTER_WINDOW)), "the earliest purge_at");
                } else {
                    // After the root, (collection, id) order.
                    let mut ordered = op.records.clone();
                    ordered.sort();
                    assert_eq!(op.records, ordered);
                }
                seen.extend(op.records.iter().cloned());
                match op.records_next {
                    Some(next) => page.after = Some(next),
                    None => break,
                }
                first = false;
            }
            let distinct = refs_sorted(seen.clone());
            assert_eq!(distinct.len(), seen.len(), "limit {limit}: a record twice: {seen:?}");
            assert_eq!(distinct, library_refs(), "limit {limit}");
        }
        let page = RecordsPage { after: None, limit: 10 };
        assert_eq!(store.get_deletion("t2", "del_a1", &page).await.unwrap(), None, "another tenant's operation");
        assert_eq!(store.get_deletion("t1", "del_nope", &page).await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn restoring_an_operation_brings_back_exactly_what_it_deleted() {
    each_store(|store| async move {
        let sch = schema(RELATIONS);
        store.migrate(&sch).await.unwrap();
        library(&store, &sch, "t1").await;
        let (authors, books) = (coll(&sch, "authors"), coll(&sch, "books"));
        delete_as(&store, &authors, "t1", "a1", "del_a1", at(100)).await.unwrap();
        // A child cannot come back alone while its parent is deleted.
        let r = store.restore_record(&actor("t1"), &books, "b2", None, None, at(101)).await;
        assert!(matches!(&r, Err(StoreError::ParentDeleted { parents }) if parents == &[rr("authors", "a1")]), "{r:?}");
        // Restore is refused to other tenants and for unknown operations.
        let r = store.restore_deletion(&actor("t2"), "del_a1", at(102)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        let r = store.restore_deletion(&actor("t1"), "del_nope", at(102)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");

        let restored = store.restore_deletion(&actor("t1"), "del_a1", at(110)).await.unwrap();
        let got = refs_sorted(restored.iter().map(|r| rr(&r.collection, &r.id)).collect());
        let expected: Vec<RecordRef> = library_refs().into_iter().filter(|r| r.collection != "drafts").collect();
        assert_eq!(got, expected, "the hard-deleted draft cannot come back");
        for r in &restored {
            assert!(r.deletion.is_none() && r.version == 3 && r.updated_at == at(110), "{r:?}");
            assert_eq!(&must_get(&store, &coll(&sch, &r.collection), "t1", &r.id).await, r);
        }
        let audit = audit_of(&store, "t1").await;
        let restores: Vec<&AuditEntry> = audit.iter().filter(|e| e.action == "restore").collect();
        assert_eq!(restores.len(), 6);
        assert!(restores.iter().all(|e| e.deletion_id.as_deref() == Some("del_a1")), "{restores:?}");
        let events = events_of(&store, "t1").await;
        let restored_events: Vec<&Event> = events.iter().filter(|e| e.kind == "record.restored").collect();
        assert_eq!(restored_events.len(), 6);
        assert!(restored_events.iter().all(|e| e.deletion_id.as_deref() == Some("del_a1") && e.version == Some(3)));

        // Nothing is left to restore: a second restore changes nothing.
        assert!(store.restore_deletion(&actor("t1"), "del_a1", at(120)).await.unwrap().is_empty());
        assert_eq!(must_get(&store, &authors, "t1", "a1").await.version, 3);
    })
    .await;
}

fn conflict(c: &str, id: &str, kind: &str, conflicting_id: Option<&str>, parent: Option<RecordRef>) -> RestoreConflict {
    RestoreConflict {
        collection: c.into(),
        id: id.into(),
        kind: kind.into(),
        conflicting_id: conflicting_id.map(str::to_string),
        parent,
    }
}

#[tokio::test]
async fn restoring_an_operation_lists_every_conflict_and_restores_nothing() {
    each_store(|store| async move {
        let sch = schema(RELATIONS);
        store.migrate(&sch).await.unwrap();
        library(&store, &sch, "t1").await;
        let (authors, books, chapters) = (coll(&sch, "authors"), coll(&sch, "books"), coll(&sch, "chapters"));
        let who = actor("t1");
        delete_as(&store, &authors, "t1", "a1", "del_a1", at(0)).await.unwrap();
        // purged: c1 is gone.
        store.purge_record(&who, &chapters, "c1", None, at(1)).await.unwrap();
        // unique-conflict: b1's isbn is taken by an active book.
        create(&store, &books, "t1", "b3", values(&[("isbn", s("I1"))]), at(2)).await;
        // parent-deleted: the author came back and was deleted again by another operation.
        store.restore_record(&who, &authors, "a1", None, None, at(3)).await.unwrap();
        delete_as(&store, &authors, "t1", "a1", "del_a1_again", at(4)).await.unwrap();
        // window-elapsed: the chapters' half hour is over, the books' hour is not.
        let late = at(CHAPTER_WINDOW + SECOND);

        let before: Vec<Option<Record>> = {
            let mut v = Vec::new();
            for (c, id) in [(&books, "b1"), (&books, "b2"), (&chapters, "c2"), (&chapters, "c3"), (&authors, "a1")] {
                v.push(get(&store, c, "t1", id).await);
            }
            v
        };
        let events_before = events_of(&store, "t1").await.len();
        let r = store.restore_deletion(&who, "del_a1", late).await;
        let Err(StoreError::RestoreConflicts(mut found)) = r else { panic!("expected conflicts, got {r:?}") };
        found.sort_by(|a, b| (&a.collection, &a.id, &a.kind).cmp(&(&b.collection, &b.id, &b.kind)));
        assert_eq!(
            found,
            [
                conflict("books", "b1", "parent-deleted", None, Some(rr("authors", "a1"))),
                conflict("books", "b1", "unique-conflict", Some("b3"), None),
                conflict("books", "b2", "parent-deleted", None, Some(rr("authors", "a1"))),
                conflict("chapters", "c1", "purged", None, None),
                conflict("chapters", "c2", "window-elapsed", None, None),
                conflict("chapters", "c3", "window-elapsed", None, None),
            ]
        );
        // All or nothing: not one record changed, nothing announced.
        let mut after = Vec::new();
        for (c, id) in [(&books, "b1"), (&books, "b2"), (&chapters, "c2"), (&chapters, "c3"), (&authors, "a1")] {
            after.push(get(&store, c, "t1", id).await);
        }
        assert_eq!(after, before);
        assert_eq!(events_of(&store, "t1").await.len(), events_before);

        // With the window still open and the conflicts resolved, the books come back; the
        // author, deleted by another operation since, is not this operation's to restore.
        let early = at(5);
        soft_delete(&store, &books, "t1", "b3", at(5)).await;
        store.restore_record(&who, &authors, "a1", None, None, at(5)).await.unwrap();
        let r = store.restore_deletion(&who, "del_a1", early).await;
        let Err(StoreError::RestoreConflicts(found)) = r else { panic!("c1 is still purged: {r:?}") };
        assert_eq!(found, [conflict("chapters", "c1", "purged", None, None)]);
    })
    .await;
}

#[tokio::test]
async fn an_eventual_cascade_is_worked_through_in_batches_and_completes_once() {
    each_store(|store| async move {
        let sch = schema(RELATIONS);
        store.migrate(&sch).await.unwrap();
        let (feeds, items, tags) = (coll(&sch, "feeds"), coll(&sch, "items"), coll(&sch, "item_tags"));
        create(&store, &feeds, "t1", "f", values(&[("name", s("News"))]), at(0)).await;
        for i in 1..=5 {
            let item = format!("i{i}");
            create(&store, &items, "t1", &item, values(&[("feed_id", reference("f"))]), at(i)).await;
            let tag = format!("g{i}");
            create(&store, &tags, "t1", &tag, values(&[("item_id", reference(&item))]), at(i)).await;
        }
        let plan = plan_of(&store, &feeds, "t1", "f").await.unwrap();
        assert_eq!(plan.immediate, [rr("feeds", "f")]);
        assert_eq!(plan.eventual.len(), 10, "{plan:?}");
        assert_eq!(plan.counts(), counts(&[("feeds", 1), ("item_tags", 5), ("items", 5)]));
        assert_eq!(plan.eventual_edges.len(), 1);
        assert_eq!(
            (plan.eventual_edges[0].child_collection.as_str(), plan.eventual_edges[0].field.as_str()),
            ("items", "feed_id")
        );

        delete_as(&store, &feeds, "t1", "f", "del_f", at(100)).await.unwrap();
        assert!(!must_get(&store, &items, "t1", "i1").await.is_deleted(), "eventual children wait for the worker");
        let page = RecordsPage { after: None, limit: 100 };
        let op = store.get_deletion("t1", "del_f", &page).await.unwrap().unwrap();
        assert_eq!((op.status.as_str(), op.pending_relations, op.records_total), ("pending", 1, 1));
        let completed = |events: Vec<Event>| {
            events
                .into_iter()
                .filter(|e| e.kind == "deletion.completed" && e.deletion_id.as_deref() == Some("del_f"))
                .collect::<Vec<_>>()
        };
        assert!(completed(events_of(&store, "t1").await).is_empty(), "not complete yet");

        let deleted = store.run_eventual(2, at(200)).await.unwrap();
        assert_eq!(deleted, 10, "every batch until the queue is empty");
        for i in 1..=5 {
            for (c, id) in [(&items, format!("i{i}")), (&tags, format!("g{i}"))] {
                let r = must_get(&store, c, "t1", &id).await;
                let mark = r.deletion.as_ref().unwrap_or_else(|| panic!("{id} is not deleted"));
                assert_eq!((mark.deletion_id.as_str(), mark.deleted_at), ("del_f", at(200)), "{id}");
            }
        }
        let op = store.get_deletion("t1", "del_f", &page).await.unwrap().unwrap();
        assert_eq!((op.status.as_str(), op.pending_relations, op.records_total), ("done", 0, 11));
        assert_eq!(op.counts, counts(&[("feeds", 1), ("item_tags", 5), ("items", 5)]));
        let done = completed(events_of(&store, "t1").await);
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].data.as_ref().and_then(|d| d.get("records")), Some(&json!(11)));

        // Nothing left: another pass deletes nothing and completes nothing again.
        assert_eq!(store.run_eventual(2, at(300)).await.unwrap(), 0);
        assert_eq!(completed(events_of(&store, "t1").await).len(), 1);
    })
    .await;
}

#[tokio::test]
async fn restoring_an_operation_still_pending_ends_its_eventual_cascade() {
    each_store(|store| async move {
        let sch = schema(RELATIONS);
        store.migrate(&sch).await.unwrap();
        let (feeds, items) = (coll(&sch, "feeds"), coll(&sch, "items"));
        create(&store, &feeds, "t1", "f", Values::new(), at(0)).await;
        for i in 1..=3 {
            create(&store, &items, "t1", &format!("i{i}"), values(&[("feed_id", reference("f"))]), at(i)).await;
        }
        delete_as(&store, &feeds, "t1", "f", "del_f", at(10)).await.unwrap();
        let restored = store.restore_deletion(&actor("t1"), "del_f", at(11)).await.unwrap();
        assert_eq!(restored.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["f"]);
        let page = RecordsPage { after: None, limit: 100 };
        let op = store.get_deletion("t1", "del_f", &page).await.unwrap().unwrap();
        assert_eq!((op.status.as_str(), op.pending_relations), ("done", 0), "the operation is over");
        assert_eq!(store.run_eventual(10, at(12)).await.unwrap(), 0, "no eventual work is left");
        for i in 1..=3 {
            assert!(!must_get(&store, &items, "t1", &format!("i{i}")).await.is_deleted());
        }
        let completed = events_of(&store, "t1")
            .await
            .into_iter()
            .filter(|e| e.kind == "deletion.completed" && e.deletion_id.as_deref() == Some("del_f"))
            .count();
        assert_eq!(completed, 1);
    })
    .await;
}

/// Feeds whose posts (a hard-delete collection) go by an eventual cascade, and another
/// eventual relation to queue work behind them.
const EVENTUAL_HARD: &str = r#"
[collections.feeds.fields]
name = { type = "string" }

[collections.posts]
delete = "hard"

[collections.posts.fields]
feed_id = { type = "ref", collection = "feeds", on_delete = "eventual" }

[collections.folders.fields]
name = { type = "string" }

[collections.files.fields]
folder_id = { type = "ref", collection = "folders", on_delete = "eventual" }
"#;

#[tokio::test]
async fn an_eventual_cascade_never_purges_a_held_record_and_never_stalls() {
    each_store(|store| async move {
        let sch = schema(EVENTUAL_HARD);
        store.migrate(&sch).await.unwrap();
        let (feeds, posts) = (coll(&sch, "feeds"), coll(&sch, "posts"));
        let (folders, files) = (coll(&sch, "folders"), coll(&sch, "files"));
        let who = actor("t1");

        // Held before the DELETE: refused like a held record in an immediate cascade, by the
        // dry run and the DELETE alike.
        create(&store, &feeds, "t1", "f1", Values::new(), at(0)).await;
        create(&store, &posts, "t1", "p1", values(&[("feed_id", reference("f1"))]), at(1)).await;
        store.place_hold(&who, &posts, "p1", None, None, at(2)).await.unwrap();
        let r = store.plan_deletion(&who, &feeds, "f1", at(3)).await;
        assert!(matches!(r, Err(StoreError::LegalHold)), "{r:?}");
        let r = delete_as(&store, &feeds, "t1", "f1", "del_f1", at(3)).await;
        assert!(matches!(r, Err(StoreError::LegalHold)), "{r:?}");
        assert!(!must_get(&store, &feeds, "t1", "f1").await.is_deleted());

        // Held after the DELETE, while its cascade is pending: the worker leaves the held
        // post, takes the others, finishes the operation, and goes on to the next one.
        create(&store, &feeds, "t1", "f2", Values::new(), at(10)).await;
        create(&store, &posts, "t1", "p2", values(&[("feed_id", reference("f2"))]), at(11)).await;
        create(&store, &posts, "t1", "p3", values(&[("feed_id", reference("f2"))]), at(12)).await;
        delete_as(&store, &feeds, "t1", "f2", "del_f2", at(13)).await.unwrap();
        store.place_hold(&who, &posts, "p3", None, None, at(14)).await.unwrap();
        create(&store, &folders, "t1", "d", Values::new(), at(15)).await;
        create(&store, &files, "t1", "x", values(&[("folder_id", reference("d"))]), at(16)).await;
        delete_as(&store, &folders, "t1", "d", "del_d", at(17)).await.unwrap();

        let deleted = store.run_eventual(10, at(20)).await.expect("the worker is never stuck on a held record");
        assert_eq!(deleted, 2, "p2 and x");
        assert_eq!(get(&store, &posts, "t1", "p2").await, None);
        assert!(get(&store, &posts, "t1", "p3").await.is_some_and(|p| p.legal_hold), "a held record is never purged");
        assert!(must_get(&store, &files, "t1", "x").await.is_deleted(), "the operation queued behind ran");
        let page = RecordsPage { after: None, limit: 100 };
        for op in ["del_f2", "del_d"] {
            let op = store.get_deletion("t1", op, &page).await.unwrap().unwrap();
            assert_eq!((op.status.as_str(), op.pending_relations), ("done", 0), "{op:?}");
        }
        assert_eq!(store.run_eventual(10, at(30)).await.unwrap(), 0);
        assert!(get(&store, &posts, "t1", "p3").await.is_some());
    })
    .await;
}

#[tokio::test]
async fn a_cascade_past_the_bound_is_finished_by_the_eventual_worker() {
    each_store(|store| async move {
        let sch = schema(&format!("{RELATIONS}\n[relations]\nmax_immediate_cascade = 2\n"));
        store.migrate(&sch).await.unwrap();
        let (authors, books, chapters) = (coll(&sch, "authors"), coll(&sch, "books"), coll(&sch, "chapters"));
        create(&store, &authors, "t1", "a", values(&[("name", s("A"))]), at(0)).await;
        let mut all = vec![rr("authors", "a")];
        for i in 1..=3 {
            let (b, c) = (format!("b{i}"), format!("c{i}"));
            create(&store, &books, "t1", &b, values(&[("author_id", reference("a"))]), at(i)).await;
            create(&store, &chapters, "t1", &c, values(&[("book_id", reference(&b))]), at(i)).await;
            all.push(rr("books", &b));
            all.push(rr("chapters", &c));
        }
        let plan = plan_of(&store, &authors, "t1", "a").await.unwrap();
        assert_eq!(plan.immediate.len(), 3, "the root and two children at most: {plan:?}");
        assert_eq!(plan.immediate[0], rr("authors", "a"));
        assert!(!plan.eventual_edges.is_empty(), "{plan:?}");
        assert_eq!(refs_sorted(plan.would_delete()), refs_sorted(all.clone()), "the bound changes when, not what");

        delete_as(&store, &authors, "t1", "a", "del_a", at(10)).await.unwrap();
        let page = RecordsPage { after: None, limit: 100 };
        let op = store.get_deletion("t1", "del_a", &page).await.unwrap().unwrap();
        assert_eq!((op.status.as_str(), op.records_total), ("pending", 3));
        assert_eq!(store.run_eventual(1, at(20)).await.unwrap(), 4);
        for r in &all {
            let rec = must_get(&store, &coll(&sch, &r.collection), "t1", &r.id).await;
            assert_eq!(rec.deletion.map(|d| d.deletion_id), Some("del_a".into()), "{r:?}");
        }
        let op = store.get_deletion("t1", "del_a", &page).await.unwrap().unwrap();
        assert_eq!((op.status.as_str(), op.records_total), ("done", 7));
    })
    .await;
}

#[tokio::test]
async fn the_trash_lists_deleted_records_in_their_window_newest_first() {
    each_store(|store| async move {
        let sch = schema(RELATIONS);
        store.migrate(&sch).await.unwrap();
        let (customers, chapters) = (coll(&sch, "customers"), coll(&sch, "chapters"));
        for id in ["cu1", "cu2", "cu3", "cu4"] {
            create(&store, &customers, "t1", id, values(&[("name", s(id))]), at(0)).await;
        }
        create(&store, &chapters, "t1", "ch1", values(&[("title", s("x"))]), at(0)).await;
        create(&store, &customers, "t2", "cu9", values(&[("name", s("other"))]), at(0)).await;
        soft_delete(&store, &customers, "t1", "cu1", at(10)).await;
        soft_delete(&store, &customers, "t1", "cu2", at(20)).await;
        soft_delete(&store, &customers, "t1", "cu3", at(20)).await;
        let other = Actor { key_id: "key_other".into(), ..actor("t1") };
        store.delete_record(&other, &chapters, "ch1", delete_req("del_ch1"), at(20)).await.unwrap();
        soft_delete(&store, &customers, "t2", "cu9", at(15)).await;

        let both = [customers.clone(), chapters.clone()];
        let trash = |q: TrashQuery, now: Timestamp, colls: Vec<Arc<Collection>>| {
            let store = store.clone();
            async move {
                let rows = store.list_trash("t1", &colls, &q, now).await.unwrap();
                assert!(rows.len() <= q.limit as usize);
                assert!(rows.iter().all(|r| r.is_deleted() && r.tenant == "t1"), "{rows:?}");
                rows.into_iter().map(|r| r.id).collect::<Vec<_>>()
            }
        };
        let q = |f: fn(&mut TrashQuery)| {
            let mut q = TrashQuery { limit: 100, ..TrashQuery::default() };
            f(&mut q);
            q
        };
        let now = at(30);
        // (deleted_at, collection, id) descending; the active cu4 and t2's cu9 never show.
        assert_eq!(trash(q(|_| {}), now, both.to_vec()).await, ["cu3", "cu2", "ch1", "cu1"]);
        assert_eq!(trash(q(|q| q.deleted_since = Some(at(20))), now, both.to_vec()).await, ["cu3", "cu2", "ch1"]);
        assert_eq!(trash(q(|q| q.deleted_before = Some(at(20))), now, both.to_vec()).await, ["cu1"]);
        assert_eq!(trash(q(|q| q.deleted_by = Some("key_other".into())), now, both.to_vec()).await, ["ch1"]);
        assert_eq!(
            trash(q(|q| q.purge_before = Some(at(20 + HOUR))), now, both.to_vec()).await,
            ["ch1", "cu1"],
            "expiring before: the chapter's half hour and the customer deleted first"
        );
        assert_eq!(trash(q(|_| {}), now, vec![customers.clone()]).await, ["cu3", "cu2", "cu1"]);
        // Past its window a record leaves the trash, even before it is purged.
        assert_eq!(trash(q(|_| {}), at(20 + CHAPTER_WINDOW), both.to_vec()).await, ["cu3", "cu2", "cu1"]);

        // Pages of one, each after the last one seen.
        let mut walked = Vec::new();
        let mut query = TrashQuery { limit: 1, ..TrashQuery::default() };
        for _ in 0..10 {
            let rows = store.list_trash("t1", &both, &query, now).await.unwrap();
            let Some(last) = rows.last() else { break };
            assert_eq!(rows.len(), 1);
            let mark = last.deletion.as_ref().unwrap();
            query.after = Some(TrashPosition {
                deleted_at: mark.deleted_at,
                collection: last.collection.clone(),
                id: last.id.clone(),
            });
            walked.push(last.id.clone());
        }
        assert_eq!(walked, ["cu3", "cu2", "ch1", "cu1"]);

        // A restored record leaves the trash.
        store.restore_record(&actor("t1"), &customers, "cu2", None, None, at(31)).await.unwrap();
        assert_eq!(trash(q(|_| {}), at(32), both.to_vec()).await, ["cu3", "ch1", "cu1"]);
    })
    .await;
}
