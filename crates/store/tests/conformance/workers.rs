//! Leases and relay positions (`WorkerStore`): one holder at a time, takeover after
//! expiry, positions fenced by the lease and kept by the outbox clean-up.

use std::time::Duration;

use super::*;

const TTL: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_lease_has_one_holder_until_it_expires_or_is_released() {
    each_store(|store| async move {
        let first = store.claim_lease("relay", "a", at(0), TTL).await.unwrap();
        assert_eq!(first.holder, "a");
        assert_eq!(first.expires_at, at(10 * SECOND));
        assert!(first.is_held_by("a", at(0)));

        // Another holder is refused while the lease runs, and told who holds it.
        let refused = store.claim_lease("relay", "b", at(5 * SECOND), TTL).await.unwrap();
        assert_eq!(refused, first, "b does not get it");
        assert!(!refused.is_held_by("b", at(5 * SECOND)));

        // The holder renews.
        let renewed = store.claim_lease("relay", "a", at(8 * SECOND), TTL).await.unwrap();
        assert_eq!(renewed.expires_at, at(18 * SECOND));
        assert_eq!(store.claim_lease("relay", "b", at(17 * SECOND), TTL).await.unwrap().holder, "a");

        // Once it has expired, another takes it over, and the old holder is refused.
        let taken = store.claim_lease("relay", "b", at(18 * SECOND), TTL).await.unwrap();
        assert_eq!((taken.holder.as_str(), taken.expires_at), ("b", at(28 * SECOND)));
        assert_eq!(store.claim_lease("relay", "a", at(19 * SECOND), TTL).await.unwrap().holder, "b");

        // Leases are independent by name.
        assert_eq!(store.claim_lease("other", "a", at(19 * SECOND), TTL).await.unwrap().holder, "a");

        // Only the holder releases; then anyone claims at once.
        assert!(!store.release_lease("relay", "a", at(20 * SECOND)).await.unwrap());
        assert!(store.release_lease("relay", "b", at(20 * SECOND)).await.unwrap());
        assert!(!store.release_lease("relay", "b", at(20 * SECOND)).await.unwrap(), "released already");
        assert_eq!(store.claim_lease("relay", "a", at(20 * SECOND), TTL).await.unwrap().holder, "a");
    })
    .await;
}

#[tokio::test]
async fn claims_racing_for_a_free_lease_have_one_winner() {
    each_store_pair(|one, two| async move {
        for round in 0..5_i64 {
            let name = format!("race{round}");
            let claims: Vec<_> = (0..8)
                .map(|i| {
                    let store = if i % 2 == 0 { one.clone() } else { two.clone() };
                    let name = name.clone();
                    tokio::spawn(async move { store.claim_lease(&name, &format!("h{i}"), at(round), TTL).await })
                })
                .collect();
            let mut leases = Vec::new();
            for claim in claims {
                leases.push(claim.await.unwrap().unwrap());
            }
            let winners: Vec<_> = (0..8).filter(|i| leases[*i].is_held_by(&format!("h{i}"), at(round))).collect();
            assert_eq!(winners.len(), 1, "round {round}: {leases:?}");
            let winner = format!("h{}", winners[0]);
            assert!(leases.iter().all(|l| l.holder == winner), "every claim is told the one holder: {leases:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_relay_position_is_stored_only_by_the_lease_holder_and_only_forward() {
    each_store(|store| async move {
        assert_eq!(store.relay_position("nats").await.unwrap(), None);
        assert!(!store.store_relay_position("nats", "a", 5, at(0)).await.unwrap(), "nobody holds the lease");
        assert_eq!(store.relay_position("nats").await.unwrap(), None);

        store.claim_lease("nats", "a", at(0), TTL).await.unwrap();
        assert!(store.store_relay_position("nats", "a", 5, at(1)).await.unwrap());
        assert!(!store.store_relay_position("nats", "b", 9, at(1)).await.unwrap(), "b does not hold it");
        assert_eq!(store.relay_position("nats").await.unwrap(), Some(5));
        assert!(store.store_relay_position("nats", "a", 3, at(2)).await.unwrap());
        assert_eq!(store.relay_position("nats").await.unwrap(), Some(5), "never backwards");

        // An expired holder can no longer move the position; the new holder resumes from it.
        assert!(!store.store_relay_position("nats", "a", 7, at(10 * SECOND)).await.unwrap(), "expired");
        store.claim_lease("nats", "b", at(11 * SECOND), TTL).await.unwrap();
        assert_eq!(store.relay_position("nats").await.unwrap(), Some(5));
        assert!(!store.store_relay_position("nats", "a", 7, at(11 * SECOND)).await.unwrap(), "taken over");
        assert!(store.store_relay_position("nats", "b", 8, at(12 * SECOND)).await.unwrap());
        assert_eq!(store.relay_position("nats").await.unwrap(), Some(8));
    })
    .await;
}

#[tokio::test]
async fn the_outbox_clean_up_keeps_what_a_relay_has_not_delivered() {
    each_store(|store| async move {
        let sch = schema("[collections.items.fields]\nname = { type = \"string\" }\n");
        store.migrate(&sch).await.unwrap();
        let items = coll(&sch, "items");
        for (i, id) in ["x", "y", "z", "w"].iter().enumerate() {
            create(&store, &items, "t1", id, values(&[("name", s(id))]), at(i64::try_from(i).unwrap())).await;
        }
        let seqs: Vec<i64> = store
            .list_all_events(&EventQuery { after: 0, collection: None, types: vec![], limit: 10 })
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs.len(), 4);

        // The relay has delivered x only: only x may go.
        store.claim_lease("nats", "a", at(0), Duration::from_secs(3600)).await.unwrap();
        assert!(store.store_relay_position("nats", "a", seqs[0], at(1)).await.unwrap());
        assert_eq!(store.cleanup_outbox(at(1000 * SECOND), 100).await.unwrap(), 1, "x only");
        assert!(store.store_relay_position("nats", "a", seqs[1], at(2)).await.unwrap());
        assert_eq!(store.cleanup_outbox(at(1000 * SECOND), 100).await.unwrap(), 1, "y; z and w are past the relay");

        // A released lease still counts until `before` passes its expiry: a restart does
        // not let the clean-up run ahead of the relay.
        assert!(store.release_lease("nats", "a", at(2000 * SECOND)).await.unwrap());
        assert_eq!(store.cleanup_outbox(at(2000 * SECOND), 100).await.unwrap(), 0);

        // A relay whose lease nobody held since `before` left the config: it holds nothing
        // back (w stays anyway: it is the newest event).
        assert_eq!(store.cleanup_outbox(at(2001 * SECOND), 100).await.unwrap(), 1, "z");
        let left = store.list_all_events(&EventQuery { after: 0, collection: None, types: vec![], limit: 10 }).await;
        assert_eq!(left.unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), vec![seqs[3]]);
        assert_eq!(store.relay_position("nats").await.unwrap(), Some(seqs[1]), "the position stays");
    })
    .await;
}
