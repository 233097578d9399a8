//! Records: create, get, patch, delete, restore, lists and their cursors, tenants.

use super::*;

const ALL_TYPES: &str = r#"
[collections.parents.fields]
name = { type = "string" }

[collections.things.fields]
text    = { type = "string", max_length = 100 }
folded  = { type = "string", case_insensitive = true }
int     = { type = "integer" }
num     = { type = "number" }
flag    = { type = "boolean" }
when    = { type = "timestamp" }
doc     = { type = "json" }
parent  = { type = "ref", collection = "parents", on_delete = "orphan" }
"#;

#[tokio::test]
async fn create_and_get_round_trip_every_field_type() {
    each_store(|store| async move {
        let sch = schema(ALL_TYPES);
        store.migrate(&sch).await.unwrap();
        let things = coll(&sch, "things");
        let samples = [
            values(&[
                ("text", s("héllo ✓ \"quoted\" 'single' \\ \n tab\t 🦀")),
                ("folded", s("ÅSA@Example.COM")),
                ("int", FieldValue::Integer(i64::MAX)),
                ("num", FieldValue::Number(-1.5e300)),
                ("flag", FieldValue::Boolean(false)),
                ("when", FieldValue::Timestamp(Timestamp::from_micros(1_700_000_000_123_456))),
                ("doc", FieldValue::Json(json!({"a": [1, {"b": null}, 2.5], "c": "x", "nested": {"deep": true}}))),
                ("parent", FieldValue::Ref("parent-1".into())),
            ]),
            values(&[
                ("text", s("")),
                ("int", FieldValue::Integer(i64::MIN)),
                ("num", FieldValue::Number(3.0)),
                ("flag", FieldValue::Boolean(true)),
                ("when", FieldValue::Timestamp(Timestamp::from_micros(-1))),
                ("doc", FieldValue::Json(json!("just a string"))),
            ]),
            values(&[
                ("int", FieldValue::Integer(0)),
                ("num", FieldValue::Number(0.1)),
                ("doc", FieldValue::Json(json!([]))),
            ]),
            values(&[("doc", FieldValue::Json(json!(42)))]),
            Values::new(),
        ];
        // Refs must point at an active record (§6.9).
        create(&store, &coll(&sch, "parents"), "t1", "parent-1", values(&[("name", s("P"))]), at(-1)).await;
        for (i, vals) in samples.iter().enumerate() {
            let id = format!("thing-{i}");
            let record = new_record("t1", &things, &id, vals.clone(), at(i as i64));
            let created = store.create_record(&actor("t1"), &things, record.clone(), None).await.expect("create");
            assert_eq!(created, record);
            let got = must_get(&store, &things, "t1", &id).await;
            assert_eq!(got, record, "round trip of {id}");
            // Lists read rows the same way.
            let page =
                store.list_records("t1", &things, &ListQuery { limit: 500, ..ListQuery::default() }).await.unwrap();
            assert_eq!(page.items.iter().find(|r| r.id == id), Some(&record));
        }
        assert_eq!(get(&store, &things, "t1", "missing").await, None);
    })
    .await;
}

#[tokio::test]
async fn unique_holds_among_active_records_only_and_folds_case_where_declared() {
    each_store(|store| async move {
        let sch = schema(PEOPLE);
        store.migrate(&sch).await.unwrap();
        let customers = coll(&sch, "customers");
        let try_create = |id: &str, email: &str, tenant: &str| {
            let store = store.clone();
            let customers = customers.clone();
            let record = new_record(tenant, &customers, id, values(&[("email", s(email))]), at(0));
            let who = actor(tenant);
            async move { store.create_record(&who, &customers, record, None).await }
        };
        try_create("a", "ÅSA@x", "t1").await.expect("first");
        for variant in ["åsa@x", "ÅSA@x", "åSa@X", "ÅSA@X"] {
            let r = try_create("b", variant, "t1").await;
            assert!(is_conflict(&r, "a", &["email"]), "{variant}: {r:?}");
        }
        // Another tenant is another namespace.
        try_create("b", "åsa@x", "t2").await.expect("other tenant");
        // Different strings stay different.
        try_create("c", "asa@x", "t1").await.expect("a without ring is another value");
        // A client-supplied id already used (active) conflicts on the id.
        let r = try_create("a", "new@x", "t1").await;
        assert!(is_conflict(&r, "a", &["id"]), "{r:?}");

        // A deleted record blocks neither its value nor is its id free again.
        soft_delete(&store, &customers, "t1", "a", at(10)).await;
        try_create("b", "åsa@x", "t1").await.expect("the holder is deleted");
        let r = try_create("a", "other@x", "t1").await;
        assert!(is_conflict(&r, "a", &["id"]), "an id used by a deleted record: {r:?}");

        // Patching onto a taken value conflicts; onto the own value in another case does not.
        let r = store.patch_record(&actor("t1"), &customers, "c", None, patch(json!({"email": "ÅSA@X"})), at(11)).await;
        assert!(is_conflict(&r, "b", &["email"]), "{r:?}");
        let r = store.patch_record(&actor("t1"), &customers, "b", None, patch(json!({"email": "ÅSA@X"})), at(12)).await;
        assert_eq!(r.expect("own value, other case").values["email"], s("ÅSA@X"));
        assert_eq!(must_get(&store, &customers, "t1", "c").await.version, 1, "a refused patch changes nothing");

        // Composite sets: collide only when every member matches; NULLs never collide.
        let products = coll(&sch, "products");
        let mk = |id: &str, sku: &str, maker: Option<&str>, model: Option<i64>| {
            let mut v = values(&[("sku", s(sku))]);
            if let Some(m) = maker {
                v.insert("maker".into(), s(m));
            }
            if let Some(m) = model {
                v.insert("model".into(), FieldValue::Integer(m));
            }
            new_record("t1", &products, id, v, at(20))
        };
        store.create_record(&actor("t1"), &products, mk("p1", "SKU", Some("acme"), Some(1)), None).await.unwrap();
        store
            .create_record(&actor("t1"), &products, mk("p2", "sku", Some("acme"), Some(2)), None)
            .await
            .expect("sku is case-sensitive");
        store
            .create_record(&actor("t1"), &products, mk("p3", "S3", Some("ACME"), Some(1)), None)
            .await
            .expect("maker is case-sensitive");
        store.create_record(&actor("t1"), &products, mk("p4", "S4", None, Some(1)), None).await.expect("null maker");
        store
            .create_record(&actor("t1"), &products, mk("p5", "S5", None, Some(1)), None)
            .await
            .expect("null maker again");
        let r = store.create_record(&actor("t1"), &products, mk("p6", "S6", Some("acme"), Some(1)), None).await;
        assert!(is_conflict(&r, "p1", &["maker", "model"]), "{r:?}");
        let r = store.create_record(&actor("t1"), &products, mk("p6", "SKU", None, None), None).await;
        assert!(is_conflict(&r, "p1", &["sku"]), "{r:?}");
    })
    .await;
}

#[tokio::test]
async fn delete_and_restore_follow_the_lifecycle_rules() {
    each_store(|store| async move {
        let sch = schema(&format!(
            "[retention]\ndefault = \"1h\"\n{PEOPLE}\n[collections.secrets]\ndelete = \"hard\"\n[collections.secrets.fields]\nvalue = {{ type = \"string\" }}\n"
        ));
        store.migrate(&sch).await.unwrap();
        let c = coll(&sch, "customers");
        let who = actor("t1");
        create(&store, &c, "t1", "r", values(&[("email", s("r@x"))]), at(0)).await;

        // Stale If-Match on an active record.
        let stale = DeleteRequest { if_match: Some(IfMatch::parse("\"v7\"")), reason: None, deletion_id: "del_x".into() };
        let r = store.delete_record(&who, &c, "r", stale, at(1)).await;
        assert!(matches!(r, Err(StoreError::PreconditionFailed { current: 1 })), "{r:?}");

        // Soft delete with a matching If-Match and a reason.
        let req = DeleteRequest {
            if_match: Some(IfMatch::parse("\"v1\"")),
            reason: Some("duplicate".into()),
            deletion_id: "del_1".into(),
        };
        let deleted = match store.delete_record(&who, &c, "r", req, at(2)).await {
            Ok(DeleteOutcome::SoftDeleted { deletion_id, record }) => {
                assert_eq!(deletion_id, "del_1");
                *record
            }
            other => panic!("{other:?}"),
        };
        let mark = DeletionMark {
            deleted_at: at(2),
            deleted_by: "key_t1".into(),
            reason: Some("duplicate".into()),
            deletion_id: "del_1".into(),
            purge_at: at(2 + HOUR),
        };
        assert_eq!(deleted.deletion.as_ref(), Some(&mark));
        assert_eq!((deleted.version, deleted.updated_at), (2, at(2)));
        assert_eq!(must_get(&store, &c, "t1", "r").await, deleted);

        // A repeated delete changes nothing and names the original deletion, whatever its If-Match.
        let again = DeleteRequest { if_match: Some(IfMatch::parse("\"v1\"")), reason: None, deletion_id: "del_2".into() };
        let r = store.delete_record(&who, &c, "r", again, at(3)).await;
        assert_eq!(r.expect("repeat"), DeleteOutcome::AlreadyDeleted { deletion_id: "del_1".into() });
        assert_eq!(must_get(&store, &c, "t1", "r").await, deleted);

        // Deleted records cannot be patched.
        let r = store.patch_record(&who, &c, "r", None, patch(json!({"name": "x"})), at(4)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");

        // Restore: stale If-Match, then a good one just before purge_at.
        let r = store.restore_record(&who, &c, "r", Some(IfMatch::parse("\"v1\"")), None, at(5)).await;
        assert!(matches!(r, Err(StoreError::PreconditionFailed { current: 2 })), "{r:?}");
        let restored = match store.restore_record(&who, &c, "r", Some(IfMatch::parse("\"v2\"")), None, at(2 + HOUR - 1)).await {
            Ok(RestoreOutcome::Restored(rec)) => rec,
            other => panic!("{other:?}"),
        };
        assert_eq!((restored.version, restored.deletion.clone(), restored.updated_at), (3, None, at(2 + HOUR - 1)));
        assert_eq!(restored.values, deleted.values);
        assert_eq!(must_get(&store, &c, "t1", "r").await, restored);
        // Restoring an active record changes nothing, whatever its If-Match.
        let r = store.restore_record(&who, &c, "r", None, None, at(2 + HOUR)).await;
        assert_eq!(r.expect("already active"), RestoreOutcome::AlreadyActive(restored.clone()));
        assert_eq!(must_get(&store, &c, "t1", "r").await.version, 3);

        // The window: at purge_at and after, restore is NotFound, yet the row is still readable.
        create(&store, &c, "t1", "w", values(&[("email", s("w@x"))]), at(10)).await;
        soft_delete(&store, &c, "t1", "w", at(20)).await;
        for late in [at(20 + HOUR), at(20 + HOUR + 1), at(20 + 48 * HOUR)] {
            let r = store.restore_record(&who, &c, "w", None, None, late).await;
            assert!(matches!(r, Err(StoreError::NotFound)), "{late}: {r:?}");
        }
        let w = must_get(&store, &c, "t1", "w").await;
        assert!(w.is_deleted());
        assert_eq!(w.version, 2);

        // A restore whose unique value is taken now conflicts and leaves the record deleted.
        create(&store, &c, "t1", "u1", values(&[("email", s("U@x"))]), at(30)).await;
        soft_delete(&store, &c, "t1", "u1", at(31)).await;
        create(&store, &c, "t1", "u2", values(&[("email", s("u@X"))]), at(32)).await;
        let r = store.restore_record(&who, &c, "u1", None, None, at(33)).await;
        assert!(
            matches!(&r, Err(StoreError::UniqueConflict { conflicting_id, .. }) if conflicting_id == "u2"),
            "{r:?}"
        );
        let u1 = must_get(&store, &c, "t1", "u1").await;
        assert!(u1.is_deleted() && u1.version == 2, "{u1:?}");
        // Once the holder is gone, the restore goes through.
        soft_delete(&store, &c, "t1", "u2", at(34)).await;
        let r = store.restore_record(&who, &c, "u1", None, None, at(35)).await;
        assert!(matches!(r, Ok(RestoreOutcome::Restored(ref rec)) if rec.version == 3), "{r:?}");

        // Unknown records.
        let r = store.delete_record(&who, &c, "nope", delete_req("del_n"), at(40)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        let r = store.restore_record(&who, &c, "nope", None, None, at(40)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        let r = store.patch_record(&who, &c, "nope", None, patch(json!({"name": "x"})), at(40)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");

        // Hard-delete collections: gone at once, no restore.
        let secrets = coll(&sch, "secrets");
        create(&store, &secrets, "t1", "k", values(&[("value", s("hunter2"))]), at(50)).await;
        let r = store.delete_record(&who, &secrets, "k", delete_req("del_h"), at(51)).await;
        assert_eq!(r.expect("hard delete"), DeleteOutcome::HardDeleted { deletion_id: "del_h".into() });
        assert_eq!(get(&store, &secrets, "t1", "k").await, None);
        let r = store.delete_record(&who, &secrets, "k", delete_req("del_h2"), at(52)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        let r = store.restore_record(&who, &secrets, "k", None, None, at(52)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    })
    .await;
}

#[tokio::test]
async fn patch_merges_checks_preconditions_and_bumps_the_version() {
    each_store(|store| async move {
        let sch = schema(ALL_TYPES);
        store.migrate(&sch).await.unwrap();
        let c = coll(&sch, "things");
        let who = actor("t1");
        let start = values(&[
            ("text", s("a")),
            ("int", FieldValue::Integer(1)),
            ("doc", FieldValue::Json(json!({"keep": 1, "drop": 2, "deep": {"x": 1}}))),
        ]);
        create(&store, &c, "t1", "p", start, at(0)).await;
        let r =
            store.patch_record(&who, &c, "p", Some(IfMatch::parse("\"v2\"")), patch(json!({"text": "b"})), at(1)).await;
        assert!(matches!(r, Err(StoreError::PreconditionFailed { current: 1 })), "{r:?}");
        let body = json!({"text": "b", "int": null, "flag": true, "doc": {"drop": null, "deep": {"y": 2}}});
        let patched =
            store.patch_record(&who, &c, "p", Some(IfMatch::parse("\"v1\"")), patch(body), at(2)).await.unwrap();
        let expected = values(&[
            ("text", s("b")),
            ("flag", FieldValue::Boolean(true)),
            ("doc", FieldValue::Json(json!({"keep": 1, "deep": {"x": 1, "y": 2}}))),
        ]);
        assert_eq!((patched.version, patched.updated_at, patched.created_at), (2, at(2), at(0)));
        assert_eq!(patched.values, expected);
        assert_eq!(must_get(&store, &c, "t1", "p").await, patched);
        let patched = store.patch_record(&who, &c, "p", Some(IfMatch::Any), patch(json!({})), at(3)).await.unwrap();
        assert_eq!(patched.version, 3);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Lists

const LISTED: &str = r#"
[collections.rows.fields]
rank  = { type = "integer" }
score = { type = "number" }
label = { type = "string", case_insensitive = true }
"#;

#[tokio::test]
async fn keyset_pagination_returns_every_record_exactly_once() {
    each_store(|store| async move {
        let sch = schema(LISTED);
        store.migrate(&sch).await.unwrap();
        let c = coll(&sch, "rows");
        let n = 23_i64;
        let mut deleted = Vec::new();
        for i in 0..n {
            let mut v = Values::new();
            if i % 4 != 0 {
                v.insert("rank".into(), FieldValue::Integer(i % 3));
            }
            if i % 5 != 1 {
                v.insert("score".into(), FieldValue::Number((i % 4) as f64 / 2.0 - 0.5));
            }
            if i % 3 != 2 {
                v.insert("label".into(), s(if i % 2 == 0 { "Blue" } else { "green" }));
            }
            // Ids deliberately not in creation order.
            let id = format!("r{:02}", (i * 7) % n);
            create(&store, &c, "t1", &id, v, at(i)).await;
            if i % 6 == 5 {
                soft_delete(&store, &c, "t1", &id, at(100 + i)).await;
                deleted.push(id);
            }
        }
        // Another tenant's rows never show.
        create(&store, &c, "t2", "r00", values(&[("rank", FieldValue::Integer(1))]), at(200)).await;
        let all: Vec<String> = (0..n).map(|i| format!("r{i:02}")).collect();
        let active: Vec<String> = all.iter().filter(|id| !deleted.contains(id)).cloned().collect();
        assert!(!deleted.is_empty());

        let keys = [
            SortKey::Id,
            SortKey::CreatedAt,
            SortKey::UpdatedAt,
            SortKey::Field("rank".into()),
            SortKey::Field("score".into()),
            SortKey::Field("label".into()),
        ];
        for (scope, expected) in
            [(DeletedScope::Active, &active), (DeletedScope::All, &all), (DeletedScope::Deleted, &deleted)]
        {
            for key in &keys {
                for descending in [false, true] {
                    let whole = walk(&store, &c, "t1", query(scope, key.clone(), descending, 500)).await;
                    assert_eq!(sorted(whole.clone()), sorted(expected.clone()), "{scope:?} {key:?} desc={descending}");
                    assert_ordered(&store, &c, &whole, key, descending).await;
                    for limit in [1, 2, 3, 5, 7] {
                        let paged = walk(&store, &c, "t1", query(scope, key.clone(), descending, limit)).await;
                        assert_eq!(paged, whole, "{scope:?} {key:?} desc={descending} limit={limit}");
                    }
                }
            }
        }
        // deleted_at is a sort key too (NULL for active records).
        let whole = walk(&store, &c, "t1", query(DeletedScope::All, SortKey::DeletedAt, true, 500)).await;
        for limit in [1, 4] {
            assert_eq!(walk(&store, &c, "t1", query(DeletedScope::All, SortKey::DeletedAt, true, limit)).await, whole);
        }
    })
    .await;
}

/// A sort value as the tests compare it; `None` is NULL.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Cmp {
    Num(f64),
    Text(String),
}

fn sort_value(r: &Record, key: &SortKey) -> Option<Cmp> {
    match key {
        SortKey::Id => Some(Cmp::Text(r.id.clone())),
        SortKey::CreatedAt => Some(Cmp::Num(r.created_at.as_micros() as f64)),
        SortKey::UpdatedAt => Some(Cmp::Num(r.updated_at.as_micros() as f64)),
        SortKey::DeletedAt => r.deletion.as_ref().map(|d| Cmp::Num(d.deleted_at.as_micros() as f64)),
        SortKey::Field(f) => match r.values.get(f) {
            None => None,
            Some(FieldValue::Integer(i)) => Some(Cmp::Num(*i as f64)),
            Some(FieldValue::Number(x)) => Some(Cmp::Num(*x)),
            Some(FieldValue::String(t)) => Some(Cmp::Text(t.clone())),
            Some(other) => panic!("unexpected {other:?}"),
        },
    }
}

/// Asserts `ids` are in the order of `key` (ties by id in the same direction), with NULL
/// sort values all at one end.
async fn assert_ordered(store: &Arc<dyn Store>, c: &Arc<Collection>, ids: &[String], key: &SortKey, descending: bool) {
    let mut rows = Vec::new();
    for id in ids {
        let r = must_get(store, c, "t1", id).await;
        rows.push((sort_value(&r, key), r.id));
    }
    let nulls: Vec<bool> = rows.iter().map(|(v, _)| v.is_none()).collect();
    let switches = nulls.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(switches <= 1, "{key:?} desc={descending}: NULLs are not grouped at one end: {rows:?}");
    for pair in rows.windows(2) {
        let ((a, a_id), (b, b_id)) = (&pair[0], &pair[1]);
        let (Some(a), Some(b)) = (a, b) else { continue };
        let ord = a.partial_cmp(b).expect("comparable").then_with(|| a_id.cmp(b_id));
        let ord = if descending { ord.reverse() } else { ord };
        assert_eq!(ord, std::cmp::Ordering::Less, "{key:?} desc={descending}: {a:?}/{a_id} before {b:?}/{b_id}");
    }
    // Among NULLs, ties are broken by id too.
    let null_ids: Vec<&String> = rows.iter().filter(|(v, _)| v.is_none()).map(|(_, id)| id).collect();
    let mut expected = null_ids.clone();
    expected.sort();
    if descending {
        expected.reverse();
    }
    assert_eq!(null_ids, expected, "{key:?} desc={descending}: NULL ties not ordered by id");
}

#[tokio::test]
async fn cursors_stay_stable_under_concurrent_writes() {
    each_store(|store| async move {
        let sch = schema(LISTED);
        store.migrate(&sch).await.unwrap();
        let c = coll(&sch, "rows");
        for i in 0..10 {
            create(&store, &c, "t1", &format!("r{i}"), values(&[("rank", FieldValue::Integer(i))]), at(i)).await;
        }
        let q = query(DeletedScope::Active, SortKey::Field("rank".into()), false, 4);
        let first = store.list_records("t1", &c, &q).await.unwrap();
        let ids: Vec<_> = first.items.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r0", "r1", "r2", "r3"]);
        // Between pages: a row already seen is deleted, one before the cursor and one after
        // it are inserted, and an unseen one is deleted.
        soft_delete(&store, &c, "t1", "r1", at(50)).await;
        soft_delete(&store, &c, "t1", "r6", at(51)).await;
        create(&store, &c, "t1", "early", values(&[("rank", FieldValue::Integer(-1))]), at(52)).await;
        create(&store, &c, "t1", "late", values(&[("rank", FieldValue::Integer(100))]), at(53)).await;
        let rest = walk(&store, &c, "t1", ListQuery { after: first.next.clone(), ..q.clone() }).await;
        assert_eq!(rest, ["r4", "r5", "r7", "r8", "r9", "late"]);
    })
    .await;
}

#[tokio::test]
async fn counts_and_filters_exclude_deleted_records() {
    each_store(|store| async move {
        let sch = schema(LISTED);
        store.migrate(&sch).await.unwrap();
        let c = coll(&sch, "rows");
        for (i, label) in ["Red", "RED", "red", "blue", "Rouge"].iter().enumerate() {
            let id = format!("r{i}");
            create(
                &store,
                &c,
                "t1",
                &id,
                values(&[("label", s(label)), ("rank", FieldValue::Integer(1))]),
                at(i as i64),
            )
            .await;
        }
        soft_delete(&store, &c, "t1", "r1", at(10)).await;
        soft_delete(&store, &c, "t1", "r3", at(11)).await;
        let count = |scope: DeletedScope, filters: Vec<FieldFilter>| {
            let store = store.clone();
            let c = c.clone();
            async move {
                let q = ListQuery { scope, filters, count: true, limit: 1, ..ListQuery::default() };
                let page = store.list_records("t1", &c, &q).await.unwrap();
                let ids = walk(&store, &c, "t1", ListQuery { count: false, ..q }).await;
                assert_eq!(page.total, Some(ids.len() as u64), "total agrees with the items");
                sorted(ids)
            }
        };
        let red = || vec![FieldFilter { field: "label".into(), value: s("red"), case_insensitive: true }];
        let rank1 =
            || vec![FieldFilter { field: "rank".into(), value: FieldValue::Integer(1), case_insensitive: false }];
        assert_eq!(count(DeletedScope::Active, vec![]).await, ["r0", "r2", "r4"]);
        assert_eq!(count(DeletedScope::All, vec![]).await, ["r0", "r1", "r2", "r3", "r4"]);
        assert_eq!(count(DeletedScope::Deleted, vec![]).await, ["r1", "r3"]);
        assert_eq!(count(DeletedScope::Active, red()).await, ["r0", "r2"]);
        assert_eq!(count(DeletedScope::All, red()).await, ["r0", "r1", "r2"]);
        assert_eq!(count(DeletedScope::Deleted, red()).await, ["r1"]);
        assert_eq!(count(DeletedScope::Active, rank1()).await, ["r0", "r2", "r4"]);
        // Deletion filters.
        let q = ListQuery {
            scope: DeletedScope::Deleted,
            deleted_since: Some(at(11)),
            count: true,
            ..ListQuery::default()
        };
        let page = store.list_records("t1", &c, &q).await.unwrap();
        assert_eq!((page.total, page.items.len(), page.items[0].id.as_str()), (Some(1), 1, "r3"));
        let q = ListQuery { scope: DeletedScope::Deleted, deleted_before: Some(at(11)), ..ListQuery::default() };
        let ids: Vec<_> = store.list_records("t1", &c, &q).await.unwrap().items.into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["r1"]);
        let q = ListQuery { scope: DeletedScope::Deleted, deleted_by: Some("key_t2".into()), ..ListQuery::default() };
        assert!(store.list_records("t1", &c, &q).await.unwrap().items.is_empty());
        // Restoring brings a record back into counts.
        store.restore_record(&actor("t1"), &c, "r1", None, None, at(12)).await.unwrap();
        assert_eq!(count(DeletedScope::Active, red()).await, ["r0", "r1", "r2"]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Tenants

#[tokio::test]
async fn tenants_are_isolated() {
    each_store(|store| async move {
        let sch = schema(PEOPLE);
        store.migrate(&sch).await.unwrap();
        let c = coll(&sch, "customers");
        create(&store, &c, "t1", "a", values(&[("email", s("a@x"))]), at(0)).await;
        create(&store, &c, "t1", "gone", values(&[("email", s("g@x"))]), at(1)).await;
        soft_delete(&store, &c, "t1", "gone", at(2)).await;
        let t1_a = must_get(&store, &c, "t1", "a").await;
        let t1_gone = must_get(&store, &c, "t1", "gone").await;
        let other = actor("t2");

        assert_eq!(get(&store, &c, "t2", "a").await, None);
        assert_eq!(get(&store, &c, "t2", "gone").await, None);
        let all = ListQuery { scope: DeletedScope::All, count: true, ..ListQuery::default() };
        let page = store.list_records("t2", &c, &all).await.unwrap();
        assert!(page.items.is_empty() && page.total == Some(0), "{page:?}");
        let r = store.patch_record(&other, &c, "a", None, patch(json!({"name": "x"})), at(3)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        let r = store.patch_record(&other, &c, "a", Some(IfMatch::parse("\"v1\"")), patch(json!({})), at(3)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "If-Match must not leak the version: {r:?}");
        let r = store.delete_record(&other, &c, "a", delete_req("del_t2"), at(3)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        let r = store.delete_record(&other, &c, "gone", delete_req("del_t2b"), at(3)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        let r = store.restore_record(&other, &c, "gone", None, None, at(3)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        let r = store.restore_record(&other, &c, "a", None, None, at(3)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        assert_eq!(must_get(&store, &c, "t1", "a").await, t1_a);
        assert_eq!(must_get(&store, &c, "t1", "gone").await, t1_gone);

        // The same id and unique value are free in another tenant, and stay separate.
        create(&store, &c, "t2", "a", values(&[("email", s("A@X"))]), at(4)).await;
        soft_delete(&store, &c, "t2", "a", at(5)).await;
        assert_eq!(must_get(&store, &c, "t1", "a").await, t1_a);
        let page = store.list_records("t1", &c, &ListQuery { count: true, ..ListQuery::default() }).await.unwrap();
        assert_eq!(page.total, Some(1));
        assert_eq!(page.items, vec![t1_a]);
    })
    .await;
}

#[tokio::test]
async fn active_ids_name_every_active_record_of_every_tenant() {
    each_store(|store| async move {
        let sch = schema(PEOPLE);
        store.migrate(&sch).await.unwrap();
        let c = coll(&sch, "customers");
        assert!(store.active_ids(&c).await.unwrap().is_empty());
        create(&store, &c, "t1", "a", values(&[("email", s("a@x"))]), at(0)).await;
        create(&store, &c, "t1", "b", values(&[("email", s("b@x"))]), at(1)).await;
        create(&store, &c, "t2", "a", values(&[("email", s("a@x"))]), at(2)).await;
        soft_delete(&store, &c, "t1", "b", at(3)).await;
        let mut ids = store.active_ids(&c).await.unwrap();
        ids.sort();
        assert_eq!(ids, [("t1".to_string(), "a".to_string()), ("t2".to_string(), "a".to_string())]);
        assert!(store.active_ids(&coll(&sch, "products")).await.unwrap().is_empty());
    })
    .await;
}
