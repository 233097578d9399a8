//! Webhooks: endpoints registered from the config, fan-out of the outbox into deliveries,
//! the order of deliveries per record, attempts, redelivery, the backlog and the clean-up
//! of the outbox.

use tombstone_domain::webhook::DeliveryError;
use tombstone_store::{AttemptOutcome, Delivery, DeliveryQuery, RecordsPage, Redelivery, WebhookEndpoint};

use super::*;

const ITEMS: &str = r#"
[collections.items.fields]
name = { type = "string" }
"#;

fn endpoint(id: &str, events: &[&str], tenant: Option<&str>) -> WebhookEndpoint {
    WebhookEndpoint {
        id: id.to_string(),
        url: format!("https://hooks.example/{id}"),
        events: events.iter().map(|e| (*e).to_string()).collect(),
        tenant: tenant.map(str::to_string),
    }
}

async fn deliveries(store: &Arc<dyn Store>, tenant: &str) -> Vec<Delivery> {
    store.list_deliveries(tenant, &DeliveryQuery { limit: 1000, ..DeliveryQuery::default() }).await.unwrap()
}

/// Every tenant's deliveries (of tenants t1 and t2), by event then endpoint.
async fn all_deliveries(store: &Arc<dyn Store>) -> Vec<Delivery> {
    let mut all = deliveries(store, "t1").await;
    all.extend(deliveries(store, "t2").await);
    all.sort_by(|a, b| (a.event_seq, &a.endpoint_id).cmp(&(b.event_seq, &b.endpoint_id)));
    all
}

async fn cursor_of(store: &Arc<dyn Store>, id: &str) -> i64 {
    store.webhook_endpoints().await.unwrap().into_iter().find(|e| e.id == id).expect("registered").cursor
}

#[tokio::test]
async fn endpoints_start_after_the_newest_event_and_leave_with_their_pending_deliveries() {
    each_store(|store| async move {
        let sch = schema(ITEMS);
        store.migrate(&sch).await.unwrap();
        let items = coll(&sch, "items");
        create(&store, &items, "t1", "old", Values::new(), at(0)).await;
        let newest = store.last_event_seq().await.unwrap();
        let e1 = endpoint("wh_1", &[], None);
        let states = store.sync_webhook_endpoints(std::slice::from_ref(&e1), at(1)).await.unwrap();
        assert_eq!(states.len(), 1);
        assert_eq!(
            (states[0].id.as_str(), states[0].url.as_str(), states[0].cursor),
            ("wh_1", e1.url.as_str(), newest)
        );
        assert_eq!((states[0].disabled_at, states[0].removed_at), (None, None));
        assert_eq!(store.webhook_endpoints().await.unwrap(), states);
        // Nothing before it is delivered to it.
        assert_eq!(store.fan_out_webhooks(std::slice::from_ref(&e1), at(2), 100).await.unwrap(), 0);
        create(&store, &items, "t1", "new", Values::new(), at(3)).await;
        assert_eq!(store.fan_out_webhooks(std::slice::from_ref(&e1), at(4), 100).await.unwrap(), 1);
        assert_eq!(store.webhook_backlog().await.unwrap(), 1);

        // Syncing again keeps its place.
        let states = store.sync_webhook_endpoints(std::slice::from_ref(&e1), at(5)).await.unwrap();
        assert_eq!(states[0].cursor, store.last_event_seq().await.unwrap());

        // It leaves the config: marked removed, its pending delivery cancelled.
        let states = store.sync_webhook_endpoints(&[], at(6)).await.unwrap();
        assert_eq!((states[0].id.as_str(), states[0].removed_at), ("wh_1", Some(at(6))));
        let d = &deliveries(&store, "t1").await[0];
        assert_eq!(
            (d.status.as_str(), d.last_error.clone()),
            ("cancelled", Some(DeliveryError::EndpointRemoved.class()))
        );
        assert_eq!(store.webhook_backlog().await.unwrap(), 0);

        // It comes back: from now, not from where it left.
        create(&store, &items, "t1", "while-away", Values::new(), at(7)).await;
        let states = store.sync_webhook_endpoints(std::slice::from_ref(&e1), at(8)).await.unwrap();
        assert_eq!((states[0].removed_at, states[0].cursor), (None, store.last_event_seq().await.unwrap()));
        assert_eq!(store.fan_out_webhooks(std::slice::from_ref(&e1), at(9), 100).await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn fan_out_filters_by_type_and_tenant_advances_cursors_and_bounds_batches() {
    each_store(|store| async move {
        let sch = schema(ITEMS);
        store.migrate(&sch).await.unwrap();
        let items = coll(&sch, "items");
        let endpoints = [
            endpoint("wh_all", &[], None),
            endpoint("wh_del", &["record.deleted"], None),
            endpoint("wh_t2", &[], Some("t2")),
        ];
        store.sync_webhook_endpoints(&endpoints, at(0)).await.unwrap();
        create(&store, &items, "t1", "a", Values::new(), at(1)).await;
        create(&store, &items, "t2", "b", Values::new(), at(2)).await;
        soft_delete(&store, &items, "t1", "a", at(3)).await;
        let events = store.list_all_events(&EventQuery { limit: 100, ..EventQuery::default() }).await.unwrap();
        assert_eq!(events.len(), 4, "created, created, deleted, deletion.completed");

        // Two events per endpoint per call.
        assert_eq!(store.fan_out_webhooks(&endpoints, at(10), 2).await.unwrap(), 3, "wh_all 2, wh_del 0, wh_t2 1");
        for e in &endpoints {
            assert_eq!(cursor_of(&store, &e.id).await, events[1].seq, "{} read past what it skipped too", e.id);
        }
        assert_eq!(store.fan_out_webhooks(&endpoints, at(11), 2).await.unwrap(), 3, "wh_all 2, wh_del 1, wh_t2 0");
        assert_eq!(store.fan_out_webhooks(&endpoints, at(12), 2).await.unwrap(), 0);
        for e in &endpoints {
            assert_eq!(cursor_of(&store, &e.id).await, events[3].seq);
        }

        let got: Vec<(String, i64, String, String)> = all_deliveries(&store)
            .await
            .into_iter()
            .map(|d| (d.endpoint_id, d.event_seq, d.event_type, d.tenant))
            .collect();
        let want = |e: &str, i: usize| (e.to_string(), events[i].seq, events[i].kind.clone(), events[i].tenant.clone());
        assert_eq!(
            got,
            [
                want("wh_all", 0),
                want("wh_all", 1),
                want("wh_t2", 1),
                want("wh_all", 2),
                want("wh_del", 2),
                want("wh_all", 3)
            ]
        );
        for d in all_deliveries(&store).await {
            assert_eq!((d.status.as_str(), d.attempts, d.last_status, d.delivered_at), ("pending", 0, None, None));
            assert_eq!(d.event_id, events.iter().find(|e| e.seq == d.event_seq).unwrap().id);
            assert!(d.next_attempt_at == at(10) || d.next_attempt_at == at(11), "due when created: {d:?}");
        }
        assert_eq!(store.webhook_backlog().await.unwrap(), 6);

        // A disabled endpoint gets nothing until it is enabled again.
        let first = deliveries(&store, "t1").await.into_iter().find(|d| d.endpoint_id == "wh_all").unwrap();
        store.record_attempt(&first.id, at(13), AttemptOutcome::EndpointGone).await.unwrap();
        create(&store, &items, "t1", "c", Values::new(), at(14)).await;
        let fanned = store.fan_out_webhooks(&endpoints[..1], at(15), 100).await.unwrap();
        assert_eq!(fanned, 0, "disabled");
        assert!(store.enable_webhook_endpoint("wh_all").await.unwrap());
        assert!(!store.enable_webhook_endpoint("wh_nope").await.unwrap());
        let state = store.webhook_endpoints().await.unwrap().into_iter().find(|e| e.id == "wh_all").unwrap();
        assert_eq!((state.disabled_at, state.disabled_reason), (None, None));
        assert_eq!(store.fan_out_webhooks(&endpoints[..1], at(16), 100).await.unwrap(), 1);
    })
    .await;
}

#[tokio::test]
async fn only_the_oldest_pending_delivery_of_each_record_is_due() {
    each_store(|store| async move {
        let sch = schema(ITEMS);
        store.migrate(&sch).await.unwrap();
        let items = coll(&sch, "items");
        let e = [endpoint("wh", &[], None)];
        store.sync_webhook_endpoints(&e, at(0)).await.unwrap();
        create(&store, &items, "t1", "a", Values::new(), at(1)).await;
        store.patch_record(&actor("t1"), &items, "a", None, patch(json!({"name": "x"})), at(2)).await.unwrap();
        create(&store, &items, "t1", "b", Values::new(), at(3)).await;
        // The same id in another tenant is another record.
        create(&store, &items, "t2", "a", Values::new(), at(4)).await;
        assert_eq!(store.fan_out_webhooks(&e, at(10), 100).await.unwrap(), 4);
        let events = store.list_all_events(&EventQuery { limit: 100, ..EventQuery::default() }).await.unwrap();
        let seq = |i: usize| events[i].seq;

        let due = |now: Timestamp| {
            let store = store.clone();
            async move {
                let due = store.due_deliveries(now, 100).await.unwrap();
                for d in &due {
                    let event = d.event.as_ref().expect("its event");
                    assert_eq!((event.seq, &event.id), (d.delivery.event_seq, &d.delivery.event_id));
                }
                due.into_iter().map(|d| d.delivery).collect::<Vec<_>>()
            }
        };
        assert!(due(at(9)).await.is_empty(), "not due before it was created");
        let now = due(at(10)).await;
        assert_eq!(now.iter().map(|d| d.event_seq).collect::<Vec<_>>(), [seq(0), seq(2), seq(3)], "a's update waits");
        assert_eq!(store.due_deliveries(at(10), 2).await.unwrap().len(), 2, "limit");

        // Delivered: the next one of the record is due.
        let first = now[0].clone();
        store.record_attempt(&first.id, at(11), AttemptOutcome::Delivered { status: 204 }).await.unwrap();
        let d = deliveries(&store, "t1").await.into_iter().find(|d| d.id == first.id).unwrap();
        assert_eq!(
            (d.status.as_str(), d.attempts, d.last_status, d.delivered_at, d.last_attempt_at),
            ("delivered", 1, Some(204), Some(at(11)), Some(at(11)))
        );
        let now = due(at(11)).await;
        assert_eq!(now.iter().map(|d| d.event_seq).collect::<Vec<_>>(), [seq(1), seq(2), seq(3)]);

        // Retry: not due before its time, and still holds its record's lane.
        let update = now[0].clone();
        let retry =
            AttemptOutcome::Retry { status: Some(503), error: DeliveryError::Http(503), next_attempt_at: at(100) };
        store.record_attempt(&update.id, at(12), retry).await.unwrap();
        let d = deliveries(&store, "t1").await.into_iter().find(|d| d.id == update.id).unwrap();
        assert_eq!(
            (d.status.as_str(), d.attempts, d.last_status, d.last_error.clone(), d.next_attempt_at),
            ("pending", 1, Some(503), Some("http 503".to_string()), at(100))
        );
        assert_eq!(due(at(50)).await.iter().map(|d| d.event_seq).collect::<Vec<_>>(), [seq(2), seq(3)]);
        assert_eq!(due(at(100)).await.iter().map(|d| d.event_seq).collect::<Vec<_>>(), [seq(1), seq(2), seq(3)]);

        // Give up: failed for good.
        store
            .record_attempt(&update.id, at(101), AttemptOutcome::GiveUp { status: None, error: DeliveryError::Timeout })
            .await
            .unwrap();
        let d = deliveries(&store, "t1").await.into_iter().find(|d| d.id == update.id).unwrap();
        assert_eq!((d.status.as_str(), d.attempts, d.last_error.clone()), ("failed", 2, Some("timeout".to_string())));

        // Cancelled: never attempted.
        let b = due(at(101)).await.into_iter().find(|d| d.event_seq == seq(2)).unwrap();
        store
            .record_attempt(&b.id, at(102), AttemptOutcome::Cancelled { error: DeliveryError::EventGone })
            .await
            .unwrap();
        let d = deliveries(&store, "t1").await.into_iter().find(|d| d.id == b.id).unwrap();
        assert_eq!(
            (d.status.as_str(), d.attempts, d.last_error.clone()),
            ("cancelled", 0, Some("event-gone".to_string()))
        );

        // 410 Gone: the endpoint is disabled and every pending delivery of it cancelled.
        create(&store, &items, "t1", "c", Values::new(), at(103)).await;
        store.fan_out_webhooks(&e, at(104), 100).await.unwrap();
        let t2a = due(at(104)).await.into_iter().find(|d| d.tenant == "t2").unwrap();
        store.record_attempt(&t2a.id, at(105), AttemptOutcome::EndpointGone).await.unwrap();
        let state = store.webhook_endpoints().await.unwrap().remove(0);
        assert_eq!(state.disabled_at, Some(at(105)));
        assert!(state.disabled_reason.is_some());
        assert!(due(at(1000)).await.is_empty());
        let pending: Vec<Delivery> =
            all_deliveries(&store).await.into_iter().filter(|d| d.status == "pending").collect();
        assert!(pending.is_empty(), "{pending:?}");
        let c = deliveries(&store, "t1").await.into_iter().find(|d| d.event_seq > seq(3)).unwrap();
        assert_eq!((c.status.as_str(), c.last_error.clone()), ("cancelled", Some("endpoint-disabled".to_string())));
        let d = deliveries(&store, "t2").await.remove(0);
        assert_eq!((d.status.as_str(), d.attempts, d.last_status), ("cancelled", 1, Some(410)));
    })
    .await;
}

#[tokio::test]
async fn deliveries_are_listed_per_tenant_with_filters() {
    each_store(|store| async move {
        let sch = schema(ITEMS);
        store.migrate(&sch).await.unwrap();
        let items = coll(&sch, "items");
        let e = [endpoint("wh_a", &[], None), endpoint("wh_b", &[], None)];
        store.sync_webhook_endpoints(&e, at(0)).await.unwrap();
        for id in ["x", "y", "z"] {
            create(&store, &items, "t1", id, Values::new(), at(1)).await;
        }
        create(&store, &items, "t2", "x", Values::new(), at(1)).await;
        store.fan_out_webhooks(&e, at(2), 100).await.unwrap();
        let t1 = deliveries(&store, "t1").await;
        assert_eq!(t1.len(), 6);
        assert!(t1.iter().all(|d| d.tenant == "t1"));
        assert!(t1.windows(2).all(|w| w[0].id < w[1].id), "ordered by id");
        assert_eq!(deliveries(&store, "t2").await.len(), 2);
        assert!(deliveries(&store, "t3").await.is_empty());

        let query = |f: fn(&mut DeliveryQuery)| {
            let mut q = DeliveryQuery { limit: 100, ..DeliveryQuery::default() };
            f(&mut q);
            q
        };
        let by_endpoint = store.list_deliveries("t1", &query(|q| q.endpoint_id = Some("wh_b".into()))).await.unwrap();
        assert_eq!(by_endpoint.len(), 3);
        assert!(by_endpoint.iter().all(|d| d.endpoint_id == "wh_b"));
        store.record_attempt(&t1[0].id, at(3), AttemptOutcome::Delivered { status: 200 }).await.unwrap();
        let delivered = store.list_deliveries("t1", &query(|q| q.status = Some("delivered".into()))).await.unwrap();
        assert_eq!(delivered.iter().map(|d| d.id.clone()).collect::<Vec<_>>(), [t1[0].id.clone()]);
        let pending = store.list_deliveries("t1", &query(|q| q.status = Some("pending".into()))).await.unwrap();
        assert_eq!(pending.len(), 5);
        let page = store
            .list_deliveries(
                "t1",
                &DeliveryQuery { after: Some(t1[1].id.clone()), limit: 2, ..DeliveryQuery::default() },
            )
            .await
            .unwrap();
        assert_eq!(page, t1[2..4].to_vec());
    })
    .await;
}

#[tokio::test]
async fn redelivery_and_the_clean_up_of_the_outbox() {
    each_store(|store| async move {
        let sch = schema(ITEMS);
        store.migrate(&sch).await.unwrap();
        let items = coll(&sch, "items");
        let (a, b) = (endpoint("wh_a", &[], None), endpoint("wh_b", &[], None));
        store.sync_webhook_endpoints(&[a.clone(), b.clone()], at(0)).await.unwrap();
        create(&store, &items, "t1", "x", Values::new(), at(1)).await;
        create(&store, &items, "t1", "y", Values::new(), at(2)).await;
        store.fan_out_webhooks(&[a.clone(), b.clone()], at(3), 100).await.unwrap();
        let events = events_of(&store, "t1").await;
        let of = |list: &[Delivery], endpoint: &str, seq: i64| {
            list.iter().find(|d| d.endpoint_id == endpoint && d.event_seq == seq).cloned().unwrap()
        };
        let list = deliveries(&store, "t1").await;
        let (ax, bx) = (of(&list, "wh_a", events[0].seq), of(&list, "wh_b", events[0].seq));

        // A failed delivery is pending again, due now.
        store
            .record_attempt(
                &ax.id,
                at(4),
                AttemptOutcome::GiveUp { status: Some(500), error: DeliveryError::Http(500) },
            )
            .await
            .unwrap();
        match store.redeliver("t1", &ax.id, at(5)).await.unwrap() {
            Redelivery::Pending(d) => {
                assert_eq!((d.id.as_str(), d.status.as_str(), d.next_attempt_at), (ax.id.as_str(), "pending", at(5)))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(store.redeliver("t2", &ax.id, at(5)).await.unwrap(), Redelivery::NotFound, "another tenant's");
        assert_eq!(store.redeliver("t1", "dlv_nope", at(5)).await.unwrap(), Redelivery::NotFound);

        // The clean-up keeps what a pending delivery needs, and the newest event.
        assert_eq!(store.cleanup_outbox(at(1000), 100).await.unwrap(), 0, "x's deliveries are pending");
        for d in deliveries(&store, "t1").await {
            store.record_attempt(&d.id, at(6), AttemptOutcome::Delivered { status: 200 }).await.unwrap();
        }
        assert_eq!(store.webhook_backlog().await.unwrap(), 0);
        assert_eq!(store.cleanup_outbox(at(1), 100).await.unwrap(), 0, "only events older than `before`");
        assert_eq!(
            store.cleanup_outbox(at(1000), 100).await.unwrap(),
            1,
            "never the newest: where followers stand (last_event_seq) never goes back"
        );
        let left = events_of(&store, "t1").await;
        assert_eq!(left, events[1..].to_vec());
        assert_eq!(store.last_event_seq().await.unwrap(), events[1].seq);

        // Its event is gone: nothing to send again.
        assert_eq!(store.redeliver("t1", &bx.id, at(7)).await.unwrap(), Redelivery::EventGone);

        // An endpoint that has not fanned an event out keeps it; one that left does not.
        create(&store, &items, "t1", "z", Values::new(), at(8)).await;
        create(&store, &items, "t1", "w", Values::new(), at(9)).await;
        store.fan_out_webhooks(std::slice::from_ref(&a), at(10), 100).await.unwrap();
        for d in deliveries(&store, "t1").await.into_iter().filter(|d| d.status == "pending") {
            store.record_attempt(&d.id, at(11), AttemptOutcome::Delivered { status: 200 }).await.unwrap();
        }
        assert_eq!(store.cleanup_outbox(at(1000), 100).await.unwrap(), 1, "y; wh_b has not read z and w");
        let left: Vec<String> = events_of(&store, "t1").await.into_iter().map(|e| e.record_id).collect();
        assert_eq!(left, ["z", "w"]);
        store.fan_out_webhooks(&[a.clone(), b.clone()], at(12), 100).await.unwrap();
        let z_seq = events_of(&store, "t1").await.into_iter().find(|e| e.record_id == "z").unwrap().seq;
        let bz = of(&deliveries(&store, "t1").await, "wh_b", z_seq);
        assert_eq!(bz.status, "pending");
        store.sync_webhook_endpoints(std::slice::from_ref(&a), at(13)).await.unwrap();
        assert_eq!(store.redeliver("t1", &bz.id, at(14)).await.unwrap(), Redelivery::EndpointRemoved);
        assert_eq!(store.cleanup_outbox(at(1000), 100).await.unwrap(), 1, "z; w is the newest");
        let left: Vec<String> = events_of(&store, "t1").await.into_iter().map(|e| e.record_id).collect();
        assert_eq!(left, ["w"]);
    })
    .await;
}

#[tokio::test]
async fn a_deletion_operation_shows_its_propagation_to_each_endpoint() {
    each_store(|store| async move {
        let sch = schema(ITEMS);
        store.migrate(&sch).await.unwrap();
        let items = coll(&sch, "items");
        let endpoints = [endpoint("wh_a", &[], None), endpoint("wh_b", &[], None), endpoint("wh_t2", &[], Some("t2"))];
        store.sync_webhook_endpoints(&endpoints, at(0)).await.unwrap();
        create(&store, &items, "t1", "x", Values::new(), at(1)).await;
        create(&store, &items, "t1", "y", Values::new(), at(2)).await;
        delete_as(&store, &items, "t1", "x", "del_x", at(3)).await.unwrap();
        delete_as(&store, &items, "t1", "y", "del_y", at(4)).await.unwrap();
        let page = RecordsPage { after: None, limit: 10 };
        let sinks = |op: &str| {
            let (store, page) = (store.clone(), page.clone());
            let op = op.to_string();
            async move {
                let op = store.get_deletion("t1", &op, &page).await.unwrap().unwrap();
                op.webhooks.into_iter().map(|(k, v)| (k, v.status, v.last_error)).collect::<Vec<_>>()
            }
        };
        let newest_of_x = events_of(&store, "t1")
            .await
            .into_iter()
            .filter(|e| e.deletion_id.as_deref() == Some("del_x"))
            .map(|e| e.seq)
            .max();
        let op = store.get_deletion("t1", "del_x", &page).await.unwrap().unwrap();
        assert_eq!(op.last_event_seq, newest_of_x, "the operation's newest event");
        let pending = |e: &str| (e.to_string(), "pending".to_string(), None::<String>);
        // Not fanned out yet: pending at every endpoint that serves the tenant (not wh_t2).
        assert_eq!(sinks("del_x").await, [pending("wh_a"), pending("wh_b")]);
        store.fan_out_webhooks(&endpoints, at(5), 100).await.unwrap();
        assert_eq!(sinks("del_x").await, [pending("wh_a"), pending("wh_b")], "deliveries pending");

        // wh_a delivers everything; wh_b gives up on one of del_y's events.
        let events = events_of(&store, "t1").await;
        let of_op = |d: &Delivery, op: &str| {
            events.iter().any(|e| e.seq == d.event_seq && e.deletion_id.as_deref() == Some(op))
        };
        for d in deliveries(&store, "t1").await {
            let outcome = if d.endpoint_id == "wh_b" && of_op(&d, "del_y") {
                AttemptOutcome::GiveUp { status: Some(500), error: DeliveryError::Http(500) }
            } else {
                AttemptOutcome::Delivered { status: 200 }
            };
            store.record_attempt(&d.id, at(6), outcome).await.unwrap();
        }
        let done = |e: &str| (e.to_string(), "done".to_string(), None::<String>);
        assert_eq!(sinks("del_x").await, [done("wh_a"), done("wh_b")]);
        assert_eq!(
            sinks("del_y").await,
            [done("wh_a"), ("wh_b".to_string(), "failed".to_string(), Some("http 500".to_string()))]
        );
    })
    .await;
}

#[tokio::test]
async fn an_endpoint_disabled_by_a_410_stops_pinning_the_outbox() {
    each_store(|store| async move {
        let sch = schema(ITEMS);
        store.migrate(&sch).await.unwrap();
        let items = coll(&sch, "items");
        let (a, b) = (endpoint("wh_a", &[], None), endpoint("wh_b", &[], None));
        store.sync_webhook_endpoints(&[a.clone(), b.clone()], at(0)).await.unwrap();
        for (i, id) in ["x", "y", "z"].iter().enumerate() {
            create(&store, &items, "t1", id, Values::new(), at(1 + i as i64)).await;
        }
        store.fan_out_webhooks(std::slice::from_ref(&a), at(5), 100).await.unwrap();
        store.fan_out_webhooks(std::slice::from_ref(&b), at(5), 1).await.unwrap();
        for d in deliveries(&store, "t1").await.into_iter().filter(|d| d.endpoint_id == "wh_a") {
            store.record_attempt(&d.id, at(6), AttemptOutcome::Delivered { status: 200 }).await.unwrap();
        }
        assert_eq!(store.cleanup_outbox(at(1000), 100).await.unwrap(), 0, "wh_b has read x only, and x is pending");
        let bx = deliveries(&store, "t1").await.into_iter().find(|d| d.endpoint_id == "wh_b").unwrap();
        store.record_attempt(&bx.id, at(7), AttemptOutcome::EndpointGone).await.unwrap();
        assert_eq!(store.webhook_backlog().await.unwrap(), 0);
        assert_eq!(store.cleanup_outbox(at(1000), 100).await.unwrap(), 2, "x and y; z is the newest");
        let left: Vec<String> = events_of(&store, "t1").await.into_iter().map(|e| e.record_id).collect();
        assert_eq!(left, ["z"]);
    })
    .await;
}
