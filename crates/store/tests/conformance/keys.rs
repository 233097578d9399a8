//! API keys: created, found, listed, revoked, audited.

use super::*;

fn key(id: &str, tenant: &str, scopes: &str, created: i64) -> StoredKey {
    StoredKey {
        id: id.to_string(),
        tenant: tenant.to_string(),
        name: (tenant == "t1").then(|| format!("name of {id}")),
        scopes: parse_scopes(scopes).unwrap(),
        secret_hash: format!("{:064x}", created),
        created_at: at(created),
    }
}

#[tokio::test]
async fn keys_are_created_found_listed_and_revoked() {
    each_store(|store| async move {
        assert!(store.list_keys().await.unwrap().is_empty());
        let k1 = key("key_b", "t1", "read,delete:products", 1);
        let k2 = key("key_a", "t2", "admin", 2);
        let k3 = key("key_c", "t1", "read_deleted", 3);
        for k in [&k2, &k1, &k3] {
            store.create_key(k.clone(), &actor(&k.tenant)).await.unwrap();
        }
        assert_eq!(store.find_key("key_b").await.unwrap(), Some(k1.clone()));
        assert_eq!(store.find_key("key_a").await.unwrap(), Some(k2.clone()));
        assert_eq!(store.find_key("key_zz").await.unwrap(), None);
        assert_eq!(store.list_keys().await.unwrap(), vec![k1.clone(), k2.clone(), k3.clone()], "oldest first");
        // An id is never silently reused.
        assert!(store.create_key(key("key_b", "t9", "admin", 9), &actor("t9")).await.is_err());
        assert_eq!(store.find_key("key_b").await.unwrap(), Some(k1.clone()));

        assert!(store.revoke_key("key_b", &actor("t1"), at(100)).await.unwrap());
        assert_eq!(store.find_key("key_b").await.unwrap(), None);
        assert!(!store.revoke_key("key_b", &actor("t1"), at(100)).await.unwrap());
        assert!(!store.revoke_key("key_zz", &actor("t1"), at(100)).await.unwrap());
        assert_eq!(store.list_keys().await.unwrap(), vec![k2, k3]);

        // Each creation and revocation is audited in the key's tenant, naming the key only.
        let entries: Vec<(String, Option<String>, Option<String>, String)> =
            audit_of(&store, "t1").await.into_iter().map(|e| (e.action, e.collection, e.record_id, e.actor)).collect();
        let entry = |action: &str, id: &str| {
            (action.to_string(), Some("keys".to_string()), Some(id.to_string()), "key_t1".to_string())
        };
        assert_eq!(entries, [entry("key_create", "key_b"), entry("key_create", "key_c"), entry("key_revoke", "key_b")]);
        assert_eq!(audit_of(&store, "t2").await.len(), 1);
        assert!(audit_of(&store, "t9").await.is_empty(), "a refused create is not audited");
        assert!(matches!(store.verify_audit().await.unwrap(), Ok(4)));
    })
    .await;
}
