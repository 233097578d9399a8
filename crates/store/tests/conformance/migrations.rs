//! Migrations: additive, idempotent, refusing what would lose or misread data.

use super::*;

const SHOP_V1: &str = r#"
[collections.products]
unique = [["sku"]]

[collections.products.fields]
sku  = { type = "string", required = true }
name = { type = "string" }
"#;

const SHOP_V2: &str = r#"
[collections.products]
unique = [["sku"], ["name"]]

[collections.products.fields]
sku         = { type = "string", required = true }
name        = { type = "string" }
price_cents = { type = "integer" }

[collections.tags.fields]
label = { type = "string", required = true }
"#;

#[tokio::test]
async fn migrate_is_idempotent_and_additive() {
    each_store(|store| async move {
        let v1 = schema(SHOP_V1);
        store.migrate(&v1).await.expect("first migrate");
        store.migrate(&v1).await.expect("re-migrating the same schema is a no-op");
        let p1 = coll(&v1, "products");
        create(&store, &p1, "t1", "a", values(&[("sku", s("A")), ("name", s("Mug"))]), at(0)).await;
        create(&store, &p1, "t1", "b", values(&[("sku", s("B")), ("name", s("Cup"))]), at(1)).await;
        soft_delete(&store, &p1, "t1", "b", at(2)).await;
        let a_before = must_get(&store, &p1, "t1", "a").await;
        let b_before = must_get(&store, &p1, "t1", "b").await;
        store.migrate(&v1).await.expect("re-migrating with rows");
        assert_eq!(must_get(&store, &p1, "t1", "a").await, a_before);

        let v2 = schema(SHOP_V2);
        store.migrate(&v2).await.expect("additive migration");
        store.migrate(&v2).await.expect("additive migration, again");
        let p2 = coll(&v2, "products");
        // Existing rows survive, deleted ones too, with the new field absent.
        assert_eq!(must_get(&store, &p2, "t1", "a").await, a_before);
        assert_eq!(must_get(&store, &p2, "t1", "b").await, b_before);
        // The new field is stored.
        let c_vals = values(&[("sku", s("C")), ("name", s("Bowl")), ("price_cents", FieldValue::Integer(450))]);
        create(&store, &p2, "t1", "c", c_vals.clone(), at(3)).await;
        assert_eq!(must_get(&store, &p2, "t1", "c").await.values, c_vals);
        // The new unique set is enforced among active records, not against deleted "b".
        let dup = store.create_record(&actor("t1"), &p2, new_record("t1", &p2, "d", values(&[("sku", s("D")), ("name", s("Mug"))]), at(4)), None).await;
        assert!(
            matches!(&dup, Err(StoreError::UniqueConflict { conflicting_id, fields }) if conflicting_id == "a" && fields == &["name"]),
            "{dup:?}"
        );
        create(&store, &p2, "t1", "e", values(&[("sku", s("E")), ("name", s("Cup"))]), at(5)).await;
        // The new collection works.
        let tags = coll(&v2, "tags");
        create(&store, &tags, "t1", "t", values(&[("label", s("blue"))]), at(6)).await;
        let page = store.list_records("t1", &p2, &ListQuery { count: true, ..ListQuery::default() }).await.unwrap();
        assert_eq!(page.total, Some(3));
    })
    .await;
}

#[tokio::test]
async fn migrate_refuses_a_changed_storage_type_and_keeps_working() {
    each_store(|store| async move {
        let v1 = schema("[collections.items.fields]\nqty = { type = \"integer\" }\nnote = { type = \"string\" }\n");
        store.migrate(&v1).await.unwrap();
        let items = coll(&v1, "items");
        let vals = values(&[("qty", FieldValue::Integer(5)), ("note", s("five"))]);
        create(&store, &items, "t1", "i", vals.clone(), at(0)).await;
        for changed in [
            "[collections.items.fields]\nqty = { type = \"string\" }\nnote = { type = \"string\" }\n",
            "[collections.items.fields]\nqty = { type = \"number\" }\nnote = { type = \"string\" }\n",
            "[collections.items.fields]\nqty = { type = \"integer\" }\nnote = { type = \"integer\" }\n",
            // A refused change refuses the whole migration, additions included.
            "[collections.items.fields]\nqty = { type = \"json\" }\nnote = { type = \"string\" }\nextra = { type = \"string\" }\n",
        ] {
            let result = store.migrate(&schema(changed)).await;
            assert!(matches!(result, Err(StoreError::Migration(_))), "{changed}: {result:?}");
        }
        // Nothing was changed by the refused migrations.
        assert_eq!(must_get(&store, &items, "t1", "i").await.values, vals);
        store.migrate(&v1).await.expect("the original schema still applies");
        assert_eq!(must_get(&store, &items, "t1", "i").await.values, vals);
    })
    .await;
}

#[tokio::test]
async fn migrate_refuses_every_field_type_change() {
    each_store(|store| async move {
        let v1 = schema(
            "[collections.items.fields]\nqty = { type = \"integer\" }\nnote = { type = \"string\" }\nts = { type = \"timestamp\" }\n",
        );
        store.migrate(&v1).await.unwrap();
        let items = coll(&v1, "items");
        let vals = values(&[
            ("qty", FieldValue::Integer(5)),
            ("note", s("five")),
            ("ts", FieldValue::Timestamp(at(0))),
        ]);
        create(&store, &items, "t1", "i", vals.clone(), at(0)).await;
        for changed in [
            // "five" cannot be read as JSON: it would silently read back as absent.
            "[collections.items.fields]\nqty = { type = \"integer\" }\nnote = { type = \"json\" }\nts = { type = \"timestamp\" }\n",
            "[collections.items.fields]\nqty = { type = \"boolean\" }\nnote = { type = \"string\" }\nts = { type = \"timestamp\" }\n",
            "[collections.items.fields]\nqty = { type = \"timestamp\" }\nnote = { type = \"string\" }\nts = { type = \"timestamp\" }\n",
            "[collections.items.fields]\nqty = { type = \"integer\" }\nnote = { type = \"string\" }\nts = { type = \"integer\" }\n",
        ] {
            let result = store.migrate(&schema(changed)).await;
            assert!(matches!(result, Err(StoreError::Migration(_))), "type change accepted: {changed}: {result:?}");
            store.migrate(&v1).await.expect("back to v1");
            assert_eq!(must_get(&store, &items, "t1", "i").await.values, vals);
        }
    })
    .await;
}

#[tokio::test]
async fn a_field_dropped_from_the_config_keeps_its_values_and_its_type() {
    each_store(|store| async move {
        let v1 = schema("[collections.items.fields]\nqty = { type = \"integer\" }\nnote = { type = \"string\" }\n");
        store.migrate(&v1).await.unwrap();
        let items = coll(&v1, "items");
        let vals = values(&[("qty", FieldValue::Integer(5)), ("note", s("five"))]);
        create(&store, &items, "t1", "i", vals.clone(), at(0)).await;
        let without = schema("[collections.items.fields]\nnote = { type = \"string\" }\n");
        store.migrate(&without).await.expect("dropping a field from the config");
        let narrow = coll(&without, "items");
        assert_eq!(must_get(&store, &narrow, "t1", "i").await.values, values(&[("note", s("five"))]));
        create(&store, &narrow, "t1", "j", values(&[("note", s("six"))]), at(1)).await;
        // Coming back with another type is still a type change.
        let retyped = schema("[collections.items.fields]\nqty = { type = \"string\" }\nnote = { type = \"string\" }\n");
        let r = store.migrate(&retyped).await;
        assert!(matches!(r, Err(StoreError::Migration(_))), "{r:?}");
        // Coming back with the same type finds the old values.
        store.migrate(&v1).await.expect("the field returns");
        assert_eq!(must_get(&store, &items, "t1", "i").await.values, vals);
        assert_eq!(must_get(&store, &items, "t1", "j").await.values, values(&[("note", s("six"))]));
    })
    .await;
}

#[tokio::test]
async fn migrate_refuses_a_unique_set_active_rows_violate_but_not_deleted_ones() {
    each_store(|store| async move {
        let v1 = schema("[collections.people.fields]\nemail = { type = \"string\" }\nname = { type = \"string\" }\n");
        store.migrate(&v1).await.unwrap();
        let people = coll(&v1, "people");
        create(&store, &people, "t1", "p1", values(&[("email", s("Ann@x")), ("name", s("Ann"))]), at(0)).await;
        create(&store, &people, "t1", "p2", values(&[("email", s("ann@x")), ("name", s("Ann"))]), at(1)).await;
        // The same values in another tenant never matter.
        create(&store, &people, "t2", "p1", values(&[("email", s("ann@x"))]), at(2)).await;

        // Case-sensitive uniqueness: "Ann@x" and "ann@x" differ, but the names collide.
        let by_name = schema(
            "[collections.people]\nunique = [[\"name\"]]\n[collections.people.fields]\nemail = { type = \"string\" }\nname = { type = \"string\" }\n",
        );
        let r = store.migrate(&by_name).await;
        assert!(matches!(r, Err(StoreError::Migration(_))), "{r:?}");
        let by_email = schema(
            "[collections.people]\nunique = [[\"email\"]]\n[collections.people.fields]\nemail = { type = \"string\" }\nname = { type = \"string\" }\n",
        );
        store.migrate(&by_email).await.expect("emails differ in case, so a case-sensitive set applies");

        // Case-insensitive uniqueness: the two emails collide once folded.
        let ci = schema(
            "[collections.people]\nunique = [[\"email\"]]\n[collections.people.fields]\nemail = { type = \"string\", case_insensitive = true }\nname = { type = \"string\" }\n",
        );
        let r = store.migrate(&ci).await;
        assert!(matches!(r, Err(StoreError::Migration(_))), "{r:?}");
        store.migrate(&by_email).await.expect("the previous schema still applies");

        // Once one duplicate is deleted, it no longer blocks either set.
        soft_delete(&store, &people, "t1", "p2", at(3)).await;
        store.migrate(&ci).await.expect("deleted duplicates do not block a unique set");
        let ci_c = coll(&ci, "people");
        let dup = store.create_record(&actor("t1"), &ci_c, new_record("t1", &ci_c, "p3", values(&[("email", s("ANN@X"))]), at(4)), None).await;
        assert!(matches!(&dup, Err(StoreError::UniqueConflict { conflicting_id, .. }) if conflicting_id == "p1"), "{dup:?}");
        store.migrate(&by_name).await.expect("deleted duplicates do not block a unique set");
        // Both rows survived every migration.
        assert_eq!(must_get(&store, &ci_c, "t1", "p1").await.values["email"], s("Ann@x"));
        assert!(must_get(&store, &ci_c, "t1", "p2").await.is_deleted());
    })
    .await;
}

#[tokio::test]
async fn toggling_case_insensitive_keeps_uniqueness_right() {
    each_store(|store| async move {
        let folded = schema(
            "[collections.people]\nunique = [[\"email\"]]\n[collections.people.fields]\nemail = { type = \"string\", case_insensitive = true }\n",
        );
        let plain =
            schema("[collections.people]\nunique = [[\"email\"]]\n[collections.people.fields]\nemail = { type = \"string\" }\n");
        store.migrate(&folded).await.unwrap();
        create(&store, &coll(&folded, "people"), "t1", "a", values(&[("email", s("A@x"))]), at(0)).await;
        store.migrate(&plain).await.unwrap();
        let p = coll(&plain, "people");
        store.patch_record(&actor("t1"), &p, "a", None, patch(json!({"email": "B@x"})), at(1)).await.unwrap();
        store.migrate(&folded).await.expect("folding again");
        let f = coll(&folded, "people");
        let r = store.create_record(&actor("t1"), &f, new_record("t1", &f, "b", values(&[("email", s("b@X"))]), at(2)), None).await;
        assert!(is_conflict(&r, "a", &["email"]), "b@X must collide with a's B@x: {r:?}");
        let r = store.create_record(&actor("t1"), &f, new_record("t1", &f, "c", values(&[("email", s("a@X"))]), at(3)), None).await;
        assert!(r.is_ok(), "nobody holds a@x any more: {r:?}");
    })
    .await;
}
