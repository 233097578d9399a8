//! Idempotency keys: claim, in flight, mismatch, replay, release, expiry.

use super::*;

#[tokio::test]
async fn idempotency_claim_in_flight_complete_replay() {
    each_store(|store| async move {
        let sch = schema(PEOPLE);
        store.migrate(&sch).await.unwrap();
        let c = coll(&sch, "customers");
        let k = idem("t1", "key_1", "abc");
        assert_eq!(store.claim_idempotency(&k, "fp1", at(0)).await.unwrap(), IdempotencyClaim::Claimed);
        assert_eq!(store.claim_idempotency(&k, "fp1", at(SECOND)).await.unwrap(), IdempotencyClaim::InFlight);
        let r = store.claim_idempotency(&k, "fp2", at(SECOND)).await.unwrap();
        assert!(matches!(r, IdempotencyClaim::Mismatch | IdempotencyClaim::InFlight), "{r:?}");
        // The same key string is another key for another api key or tenant.
        assert_eq!(
            store.claim_idempotency(&idem("t1", "key_2", "abc"), "fp1", at(2)).await.unwrap(),
            IdempotencyClaim::Claimed
        );
        assert_eq!(
            store.claim_idempotency(&idem("t2", "key_1", "abc"), "fp1", at(2)).await.unwrap(),
            IdempotencyClaim::Claimed
        );

        // The create completes the key in its own transaction.
        let rec = new_record("t1", &c, "c1", values(&[("email", s("c@x"))]), at(3));
        store.create_record(&actor("t1"), &c, rec, Some((k.clone(), response("c1")))).await.unwrap();
        assert_eq!(store.claim_idempotency(&k, "fp1", at(4)).await.unwrap(), IdempotencyClaim::Replay(response("c1")));
        assert_eq!(store.claim_idempotency(&k, "fp2", at(4)).await.unwrap(), IdempotencyClaim::Mismatch);
        // Still a replay just inside 24 h, even after the stale-claim delay.
        assert_eq!(
            store.claim_idempotency(&k, "fp1", at(IDEMPOTENCY_TTL_MICROS - 1)).await.unwrap(),
            IdempotencyClaim::Replay(response("c1"))
        );
        // After 24 h the key is new again.
        assert_eq!(
            store.claim_idempotency(&k, "fp2", at(IDEMPOTENCY_TTL_MICROS + 1)).await.unwrap(),
            IdempotencyClaim::Claimed
        );

        // A failed create does not complete the key: it stays in flight.
        let k2 = idem("t1", "key_1", "dup");
        assert_eq!(store.claim_idempotency(&k2, "fpd", at(10)).await.unwrap(), IdempotencyClaim::Claimed);
        let dup = new_record("t1", &c, "c2", values(&[("email", s("C@X"))]), at(11));
        let r = store.create_record(&actor("t1"), &c, dup, Some((k2.clone(), response("c2")))).await;
        assert!(
            matches!(&r, Err(StoreError::UniqueConflict { conflicting_id, .. }) if conflicting_id == "c1"),
            "{r:?}"
        );
        assert_eq!(get(&store, &c, "t1", "c2").await, None);
        assert_eq!(store.claim_idempotency(&k2, "fpd", at(12)).await.unwrap(), IdempotencyClaim::InFlight);
        // An error answer is completed on its own and replayed.
        let problem = StoredResponse {
            status: 409,
            headers: vec![("content-type".into(), "application/problem+json".into())],
            body: "{\"type\":\"unique-conflict\"}".into(),
            record: None,
        };
        store.complete_idempotency(&k2, problem.clone()).await.unwrap();
        assert_eq!(store.claim_idempotency(&k2, "fpd", at(13)).await.unwrap(), IdempotencyClaim::Replay(problem));

        // A released claim can be retried at once.
        let k3 = idem("t1", "key_1", "retry");
        assert_eq!(store.claim_idempotency(&k3, "fpr", at(20)).await.unwrap(), IdempotencyClaim::Claimed);
        store.release_idempotency(&k3).await.unwrap();
        assert_eq!(store.claim_idempotency(&k3, "fpr", at(21)).await.unwrap(), IdempotencyClaim::Claimed);
        // An abandoned claim is taken over once stale, not before.
        assert_eq!(
            store.claim_idempotency(&k3, "fpr", at(21 + IDEMPOTENCY_STALE_MICROS - 1)).await.unwrap(),
            IdempotencyClaim::InFlight
        );
        assert_eq!(
            store.claim_idempotency(&k3, "fpr", at(21 + IDEMPOTENCY_STALE_MICROS + 1)).await.unwrap(),
            IdempotencyClaim::Claimed
        );
        // Completing a key nobody claimed changes nothing.
        let unclaimed = idem("t1", "key_1", "never-claimed");
        let r = store.complete_idempotency(&unclaimed, response("zz")).await;
        assert!(matches!(r, Err(StoreError::IdempotencyConflict)), "{r:?}");
        assert_eq!(store.claim_idempotency(&unclaimed, "fpz", at(31)).await.unwrap(), IdempotencyClaim::Claimed);
        // Releasing a completed key does not forget its response.
        store.release_idempotency(&k2).await.unwrap();
        assert!(matches!(store.claim_idempotency(&k2, "fpd", at(30)).await.unwrap(), IdempotencyClaim::Replay(_)));
    })
    .await;
}

#[tokio::test]
async fn idempotency_keys_expire_after_24_hours() {
    each_store(|store| async move {
        let old = idem("t1", "key_1", "old");
        let young = idem("t1", "key_1", "young");
        assert_eq!(store.claim_idempotency(&old, "fp", at(0)).await.unwrap(), IdempotencyClaim::Claimed);
        store.complete_idempotency(&old, response("x")).await.unwrap();
        assert_eq!(store.claim_idempotency(&young, "fp", at(HOUR)).await.unwrap(), IdempotencyClaim::Claimed);
        store.complete_idempotency(&young, response("y")).await.unwrap();
        let now = at(IDEMPOTENCY_TTL_MICROS + SECOND);
        let removed = store.expire_idempotency(Timestamp::from_micros(now.as_micros() - IDEMPOTENCY_TTL_MICROS)).await;
        assert_eq!(removed.unwrap(), 1);
        assert_eq!(store.claim_idempotency(&young, "fp", now).await.unwrap(), IdempotencyClaim::Replay(response("y")));
        // The expired key is new: another body is no mismatch any more.
        assert_eq!(store.claim_idempotency(&old, "other", now).await.unwrap(), IdempotencyClaim::Claimed);
    })
    .await;
}
