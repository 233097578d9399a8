//! Races that must have exactly one winner, through the trait only. All contenders start
//! together on a multi-threaded runtime: on a store with one writer they queue, on a store
//! with a pool of connections they race for real; the outcome must be the same.

use super::*;

const CONTENDED: &str = r#"
[collections.accounts]
unique = [["email"]]

[collections.accounts.fields]
email = { type = "string", required = true, case_insensitive = true }
n     = { type = "integer" }
"#;

const CONTENDERS: usize = 20;

/// Runs `CONTENDERS` copies of `task` at once (each gets its index) and returns their
/// results in index order.
async fn race<T, F, Fut>(task: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let start = Arc::new(tokio::sync::Barrier::new(CONTENDERS));
    let mut handles = Vec::new();
    for i in 0..CONTENDERS {
        let start = start.clone();
        let fut = task(i);
        handles.push(tokio::spawn(async move {
            start.wait().await;
            fut.await
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("a contender panicked"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_patches_with_the_same_if_match_have_one_winner() {
    each_store(|store| async move {
        let sch = schema(CONTENDED);
        store.migrate(&sch).await.unwrap();
        let c = coll(&sch, "accounts");
        create(&store, &c, "t1", "acc", values(&[("email", s("a@x")), ("n", FieldValue::Integer(0))]), at(0)).await;
        let results = race(|i| {
            let (store, c) = (store.clone(), c.clone());
            async move {
                let body = patch(json!({ "n": i }));
                store
                    .patch_record(&actor("t1"), &c, "acc", Some(IfMatch::parse("\"v1\"")), body, at(1 + i as i64))
                    .await
            }
        })
        .await;
        let winners: Vec<(usize, &Record)> =
            results.iter().enumerate().filter_map(|(i, r)| r.as_ref().ok().map(|rec| (i, rec))).collect();
        assert_eq!(winners.len(), 1, "exactly one If-Match \"v1\" wins: {results:?}");
        let (winner, record) = winners[0];
        assert_eq!((record.version, &record.values["n"]), (2, &FieldValue::Integer(winner as i64)));
        for r in results.iter().filter(|r| r.is_err()) {
            assert!(matches!(r, Err(StoreError::PreconditionFailed { current: 2 })), "{r:?}");
        }
        assert_eq!(&must_get(&store, &c, "t1", "acc").await, record);
        let updates = audit_of(&store, "t1").await.into_iter().filter(|e| e.action == "update").count();
        assert_eq!(updates, 1, "only the winner wrote");
        let events = events_of(&store, "t1").await.into_iter().filter(|e| e.kind == "record.updated").count();
        assert_eq!(events, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_unique_value_have_one_winner() {
    each_store(|store| async move {
        let sch = schema(CONTENDED);
        store.migrate(&sch).await.unwrap();
        let c = coll(&sch, "accounts");
        let results = race(|i| {
            let (store, c) = (store.clone(), c.clone());
            async move {
                // The same address, in another case each time: the set folds case.
                let email = if i % 2 == 0 { "Same@X" } else { "same@x" };
                let record = new_record("t1", &c, &format!("acc{i:02}"), values(&[("email", s(email))]), at(i as i64));
                store.create_record(&actor("t1"), &c, record, None).await
            }
        })
        .await;
        let winners: Vec<&Record> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "exactly one create wins: {results:?}");
        let winner = winners[0].id.clone();
        for r in results.iter().filter(|r| r.is_err()) {
            assert!(
                matches!(r, Err(StoreError::UniqueConflict { conflicting_id, fields }) if *conflicting_id == winner && fields == &["email"]),
                "a loser names the winner: {r:?}"
            );
        }
        let page = store.list_records("t1", &c, &ListQuery { count: true, ..ListQuery::default() }).await.unwrap();
        assert_eq!(page.total, Some(1));
        assert_eq!(page.items[0].id, winner);
        let creates = audit_of(&store, "t1").await.into_iter().filter(|e| e.action == "create").count();
        assert_eq!(creates, 1, "only the winner wrote");
        assert_eq!(store.verify_audit().await.unwrap(), Ok(1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deletes_of_one_record_make_one_deletion() {
    each_store(|store| async move {
        let sch = schema(CONTENDED);
        store.migrate(&sch).await.unwrap();
        let c = coll(&sch, "accounts");
        create(&store, &c, "t1", "acc", values(&[("email", s("a@x"))]), at(0)).await;
        let results = race(|i| {
            let (store, c) = (store.clone(), c.clone());
            async move { delete_as(&store, &c, "t1", "acc", &format!("del_{i:02}"), at(1 + i as i64)).await }
        })
        .await;
        let winners: Vec<&str> = results
            .iter()
            .filter_map(|r| match r {
                Ok(DeleteOutcome::SoftDeleted { deletion_id, .. }) => Some(deletion_id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        for r in &results {
            match r {
                Ok(DeleteOutcome::SoftDeleted { .. }) => {}
                Ok(DeleteOutcome::AlreadyDeleted { deletion_id }) => assert_eq!(deletion_id, winners[0]),
                other => panic!("{other:?}"),
            }
        }
        let rec = must_get(&store, &c, "t1", "acc").await;
        assert_eq!((rec.version, rec.deletion.map(|d| d.deletion_id)), (2, Some(winners[0].to_string())));
        let deletes = audit_of(&store, "t1").await.into_iter().filter(|e| e.action == "delete").count();
        assert_eq!(deletes, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_restores_of_one_record_restore_it_once() {
    each_store(|store| async move {
        let sch = schema(CONTENDED);
        store.migrate(&sch).await.unwrap();
        let c = coll(&sch, "accounts");
        create(&store, &c, "t1", "acc", values(&[("email", s("a@x"))]), at(0)).await;
        soft_delete(&store, &c, "t1", "acc", at(1)).await;
        let results = race(|i| {
            let (store, c) = (store.clone(), c.clone());
            async move { store.restore_record(&actor("t1"), &c, "acc", None, None, at(2 + i as i64)).await }
        })
        .await;
        let restored = results.iter().filter(|r| matches!(r, Ok(RestoreOutcome::Restored(_)))).count();
        assert_eq!(restored, 1, "{results:?}");
        for r in &results {
            assert!(matches!(r, Ok(RestoreOutcome::Restored(_) | RestoreOutcome::AlreadyActive(_))), "{r:?}");
        }
        let rec = must_get(&store, &c, "t1", "acc").await;
        assert!(!rec.is_deleted() && rec.version == 3, "{rec:?}");
        let restores = audit_of(&store, "t1").await.into_iter().filter(|e| e.action == "restore").count();
        assert_eq!(restores, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_one_idempotency_key_have_one_winner() {
    each_store(|store| async move {
        let key = idem("t1", "key_t1", "once");
        let results = race(|_| {
            let (store, key) = (store.clone(), key.clone());
            async move { store.claim_idempotency(&key, "fp", at(0)).await }
        })
        .await;
        let claimed = results.iter().filter(|r| matches!(r, Ok(IdempotencyClaim::Claimed))).count();
        assert_eq!(claimed, 1, "exactly one request runs: {results:?}");
        for r in &results {
            assert!(matches!(r, Ok(IdempotencyClaim::Claimed | IdempotencyClaim::InFlight)), "{r:?}");
        }
    })
    .await;
}
