//! History (SPEC §14) on every store: one version per change with `valid_to` chained,
//! `version_row`, `version_row_at` at every instant, `list_versions` paging, `list_as_of`
//! with filters, sort, cursors and counts, `revert_record` (values, preconditions, unknown
//! versions, unique conflicts), and purge and erasure taking the versions with them.

use tombstone_domain::query::Sort;

use super::*;

const SCHEMA: &str = r#"
[retention]
default = "1h"

[collections.items]
unique = [["code"]]

[collections.items.fields]
code = { type = "string" }
n    = { type = "integer" }
"#;

#[tokio::test]
async fn every_change_keeps_a_version_readable_by_number_and_by_instant() {
    each_store(|store| async move {
        let sch = schema(SCHEMA);
        store.migrate(&sch).await.unwrap();
        let items = coll(&sch, "items");
        let who = actor("t1");
        create(&store, &items, "t1", "a", values(&[("code", s("A")), ("n", FieldValue::Integer(1))]), at(0)).await;
        store.patch_record(&who, &items, "a", None, patch(json!({"n": 2})), at(SECOND)).await.unwrap();
        let deletion = soft_delete(&store, &items, "t1", "a", at(2 * SECOND)).await;
        store.restore_record(&who, &items, "a", None, None, at(3 * SECOND)).await.unwrap();

        let page = store.list_versions("t1", "items", "a", None, 10).await.unwrap();
        let summary: Vec<(i64, &str, Option<&str>)> =
            page.items.iter().map(|v| (v.version, v.action.as_str(), v.deletion_id.as_deref())).collect();
        assert_eq!(
            summary,
            vec![
                (4, "restore", None),
                (3, "delete", Some(deletion.as_str())),
                (2, "update", None),
                (1, "create", None)
            ]
        );
        assert_eq!(page.next, None);
        let froms: Vec<Timestamp> = page.items.iter().map(|v| v.valid_from).collect();
        assert_eq!(froms, vec![at(3 * SECOND), at(2 * SECOND), at(SECOND), at(0)]);
        let tos: Vec<Option<Timestamp>> = page.items.iter().map(|v| v.valid_to).collect();
        assert_eq!(tos, vec![None, Some(at(3 * SECOND)), Some(at(2 * SECOND)), Some(at(SECOND))]);
        assert!(page.items.iter().all(|v| v.actor.as_deref() == Some("key_t1")));
        assert_eq!(page.items[2].record["n"], 2);

        // Paging keeps valid_to across pages.
        let first = store.list_versions("t1", "items", "a", None, 3).await.unwrap();
        assert_eq!(first.next, Some(2));
        let second = store.list_versions("t1", "items", "a", first.next, 3).await.unwrap();
        assert_eq!(
            second.items.iter().map(|v| (v.version, v.valid_to)).collect::<Vec<_>>(),
            vec![(1, Some(at(SECOND)))]
        );

        let two = store.version_row("t1", "items", "a", 2).await.unwrap().unwrap();
        assert_eq!((two.version, two.valid_from, two.valid_to), (2, at(SECOND), Some(at(2 * SECOND))));
        assert!(store.version_row("t1", "items", "a", 9).await.unwrap().is_none());
        // At every instant, the version in force then; nothing before the create; another
        // tenant sees nothing.
        for (t, want) in [(-1, None), (0, Some(1)), (SECOND - 1, Some(1)), (SECOND, Some(2)), (5 * SECOND, Some(4))] {
            let row = store.version_row_at("t1", "items", "a", at(t)).await.unwrap();
            assert_eq!(row.map(|r| r.version), want, "at +{t}");
        }
        assert!(store.version_row_at("t2", "items", "a", at(5 * SECOND)).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn as_of_lists_filter_sort_page_and_count_the_past() {
    each_store(|store| async move {
        let sch = schema(SCHEMA);
        store.migrate(&sch).await.unwrap();
        let items = coll(&sch, "items");
        let who = actor("t1");
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let vals = values(&[("code", s(id)), ("n", FieldValue::Integer(i as i64))]);
            create(&store, &items, "t1", id, vals, at(i as i64)).await;
        }
        create(&store, &items, "t2", "z", values(&[("code", s("z"))]), at(0)).await;
        let then = at(10);
        store.patch_record(&who, &items, "a", None, patch(json!({"n": 9})), at(SECOND)).await.unwrap();
        soft_delete(&store, &items, "t1", "b", at(SECOND)).await;
        create(&store, &items, "t1", "e", values(&[("code", s("e"))]), at(SECOND)).await;

        let ids = |page: &tombstone_store::Page| page.items.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        let all = store.list_as_of("t1", &items, then, &ListQuery::default()).await.unwrap();
        assert_eq!(ids(&all), ["a", "b", "c", "d"]);
        assert_eq!(all.items[0].values.get("n"), Some(&FieldValue::Integer(0)));
        let now = store.list_as_of("t1", &items, at(2 * SECOND), &ListQuery::default()).await.unwrap();
        assert_eq!(ids(&now), ["a", "c", "d", "e"]);
        let deleted_too = ListQuery { scope: DeletedScope::All, ..ListQuery::default() };
        assert_eq!(
            ids(&store.list_as_of("t1", &items, at(2 * SECOND), &deleted_too).await.unwrap()),
            ["a", "b", "c", "d", "e"]
        );
        let filtered = ListQuery {
            filters: vec![FieldFilter { field: "n".into(), value: FieldValue::Integer(2), case_insensitive: false }],
            ..ListQuery::default()
        };
        assert_eq!(ids(&store.list_as_of("t1", &items, then, &filtered).await.unwrap()), ["c"]);
        // Sorted by n descending, two to a page, with the total.
        let mut q = ListQuery {
            sort: Sort { key: SortKey::Field("n".into()), descending: true },
            limit: 2,
            count: true,
            ..ListQuery::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = store.list_as_of("t1", &items, then, &q).await.unwrap();
            assert_eq!(page.total, Some(4));
            seen.extend(ids(&page));
            match page.next {
                Some(p) => q.after = Some(p),
                None => break,
            }
        }
        assert_eq!(seen, ["d", "c", "b", "a"]);
        // By id, descending, paged.
        let mut q = ListQuery { sort: Sort { key: SortKey::Id, descending: true }, limit: 3, ..ListQuery::default() };
        let first = store.list_as_of("t1", &items, at(2 * SECOND), &q).await.unwrap();
        assert_eq!(ids(&first), ["e", "d", "c"]);
        q.after = first.next;
        assert_eq!(ids(&store.list_as_of("t1", &items, at(2 * SECOND), &q).await.unwrap()), ["a"]);
    })
    .await;
}

#[tokio::test]
async fn revert_writes_a_new_version_and_purge_and_erasure_take_the_history() {
    each_store(|store| async move {
        let sch = schema(SCHEMA);
        store.migrate(&sch).await.unwrap();
        let items = coll(&sch, "items");
        let who = actor("t1");
        create(&store, &items, "t1", "a", values(&[("code", s("A")), ("n", FieldValue::Integer(1))]), at(0)).await;
        store.patch_record(&who, &items, "a", None, patch(json!({"code": "B", "n": 2})), at(SECOND)).await.unwrap();
        let back = store.revert_record(&who, &items, "a", 1, None, at(2 * SECOND)).await.unwrap();
        assert_eq!(
            (back.version, back.values.get("code"), back.values.get("n")),
            (3, Some(&s("A")), Some(&FieldValue::Integer(1)))
        );
        assert_eq!(must_get(&store, &items, "t1", "a").await, back);
        let top = store.version_row("t1", "items", "a", 3).await.unwrap().unwrap();
        assert_eq!(top.action, "revert");
        assert_eq!(audit_of(&store, "t1").await.last().map(|e| e.action.clone()), Some("revert".to_string()));
        // Unknown version: a validation error; a stale If-Match: refused; both change nothing.
        let unknown = store.revert_record(&who, &items, "a", 9, None, at(3 * SECOND)).await;
        assert!(matches!(unknown, Err(StoreError::Validation(_))), "{unknown:?}");
        let stale = store.revert_record(&who, &items, "a", 2, Some(IfMatch::parse("\"v1\"")), at(3 * SECOND)).await;
        assert!(matches!(stale, Err(StoreError::PreconditionFailed { current: 3 })), "{stale:?}");
        // A value another active record holds now: a unique conflict naming it.
        create(&store, &items, "t1", "other", values(&[("code", s("B"))]), at(3 * SECOND)).await;
        let taken = store.revert_record(&who, &items, "a", 2, None, at(4 * SECOND)).await;
        assert!(is_conflict(&taken, "other", &["code"]), "{taken:?}");
        assert_eq!(must_get(&store, &items, "t1", "a").await.version, 3);
        // Another tenant's record: not found.
        let foreign = store.revert_record(&actor("t2"), &items, "a", 1, None, at(4 * SECOND)).await;
        assert!(matches!(foreign, Err(StoreError::NotFound)), "{foreign:?}");

        // Purge removes the versions.
        soft_delete(&store, &items, "t1", "a", at(5 * SECOND)).await;
        store.purge_record(&who, &items, "a", None, at(6 * SECOND)).await.unwrap();
        assert!(store.list_versions("t1", "items", "a", None, 10).await.unwrap().items.is_empty());
        assert!(store.version_row_at("t1", "items", "a", at(SECOND)).await.unwrap().is_none());
        // Erasure removes them and counts them.
        store.patch_record(&who, &items, "other", None, patch(json!({"n": 5})), at(7 * SECOND)).await.unwrap();
        let receipt = store.erase_record(&who, &items, "other", None, at(8 * SECOND)).await.unwrap();
        assert_eq!(receipt.versions, 2);
        assert!(store.list_versions("t1", "items", "other", None, 10).await.unwrap().items.is_empty());
    })
    .await;
}
