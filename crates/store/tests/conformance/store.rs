//! The rest of a store: health, metadata, the read cache.

use super::*;

#[tokio::test]
async fn ping_and_metadata() {
    each_store(|store| async move {
        store.ping().await.expect("ping");
        assert_eq!(store.get_meta("demo_seeded").await.unwrap(), None);
        store.set_meta("demo_seeded", "1").await.unwrap();
        store.set_meta("demo_seeded", "2").await.unwrap();
        assert_eq!(store.get_meta("demo_seeded").await.unwrap().as_deref(), Some("2"));
    })
    .await;
}

#[tokio::test]
async fn a_cached_store_sees_another_store_s_writes_after_sync_cache() {
    each_store_pair(|cached, other| async move {
        let sch = schema("[collections.items.fields]\nname = { type = \"string\" }\n");
        cached.migrate(&sch).await.unwrap();
        other.migrate(&sch).await.unwrap();
        let items = coll(&sch, "items");
        assert_eq!(other.sync_cache().await.unwrap(), 0, "a store without a cache has nothing to sync");

        // The cached store reads (and caches) the absence, then its own write.
        assert_eq!(get(&cached, &items, "t1", "x").await, None);
        create(&cached, &items, "t1", "mine", values(&[("name", s("mine"))]), at(0)).await;
        assert!(get(&cached, &items, "t1", "mine").await.is_some(), "its own writes invalidate at once");

        // Another store writes on the same database.
        create(&other, &items, "t1", "x", values(&[("name", s("one"))]), at(1)).await;
        other.patch_record(&actor("t1"), &items, "mine", None, patch(json!({"name": "theirs"})), at(2)).await.unwrap();
        assert!(cached.sync_cache().await.unwrap() >= 2, "both changes are seen");
        assert_eq!(get(&cached, &items, "t1", "x").await.map(|r| r.values["name"].clone()), Some(s("one")));
        assert_eq!(must_get(&cached, &items, "t1", "mine").await.version, 2);
        assert_eq!(cached.sync_cache().await.unwrap(), 0, "nothing new since");

        soft_delete(&other, &items, "t1", "x", at(3)).await;
        cached.sync_cache().await.unwrap();
        assert!(must_get(&cached, &items, "t1", "x").await.is_deleted());

        // Holds, purges and erasures by the other store reach the cache too.
        other.place_hold(&actor("t1"), &items, "mine", None, None, at(4)).await.unwrap();
        other.purge_record(&actor("t1"), &items, "x", None, at(5)).await.unwrap();
        cached.sync_cache().await.unwrap();
        assert!(must_get(&cached, &items, "t1", "mine").await.legal_hold);
        assert_eq!(get(&cached, &items, "t1", "x").await, None, "purged elsewhere");
        create(&cached, &items, "t1", "z", Values::new(), at(6)).await;
        assert!(get(&cached, &items, "t1", "z").await.is_some());
        other.erase_record(&actor("t1"), &items, "z", None, at(7)).await.unwrap();
        cached.sync_cache().await.unwrap();
        assert_eq!(get(&cached, &items, "t1", "z").await, None, "erased elsewhere");
    })
    .await;
}
