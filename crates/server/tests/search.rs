//! Full-text search: results are post-filtered by the database, so deleted, purged and
//! erased records never appear, even while the index lags; the indexer resumes from its
//! own position; the reconciler finds and repairs drift; erasure leaves no bytes behind.

mod common;

use common::{TestApp, TestResponse};
use serde_json::{Value, json};
use tombstone_server::search::{SearchIndex, reconcile};

const SCHEMA: &str = r#"
[retention]
default = "7d"

[collections.products.fields]
sku  = { type = "string", required = true }
name = { type = "string", required = true, search = true }

[collections.people.fields]
name  = { type = "string", search = true, pii = true }

[collections.sessions]
delete = "hard"
[collections.sessions.fields]
label = { type = "string", search = true }
"#;

fn ids(r: &TestResponse) -> Vec<String> {
    r.assert_status(200);
    r.json()["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect()
}

async fn search(app: &TestApp, q: &str) -> Vec<String> {
    ids(&app.get(&format!("/v1/products?q={q}"), &app.admin).await)
}

async fn product(app: &TestApp, sku: &str, name: &str) -> String {
    app.create("products", &app.admin, &json!({"sku": sku, "name": name})).await["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn deleted_purged_and_erased_records_never_appear_and_restore_brings_back() {
    let app = TestApp::with_schema(SCHEMA).await;
    let mug = product(&app, "1", "blue mug").await;
    let cup = product(&app, "2", "blue cup").await;
    let pot = product(&app, "3", "blue teapot").await;
    app.index().await;
    assert_eq!(search(&app, "blue").await.len(), 3);
    app.delete(&format!("/v1/products/{mug}"), &app.admin).await.assert_status(204);
    app.delete(&format!("/v1/products/{cup}"), &app.admin).await.assert_status(204);
    app.post_empty(&format!("/v1/products/{cup}:purge"), &app.admin).await.assert_status(204);
    app.delete(&format!("/v1/products/{pot}"), &app.admin).await.assert_status(204);
    app.post_empty(&format!("/v1/products/{pot}:erase"), &app.admin).await.assert_status(200);
    // Before the indexer runs, the post-filter already hides them all.
    assert!(search(&app, "blue").await.is_empty());
    app.index().await;
    assert!(search(&app, "blue").await.is_empty());
    app.post_empty(&format!("/v1/products/{mug}:restore"), &app.admin).await.assert_status(200);
    app.index().await;
    assert_eq!(search(&app, "blue").await, std::slice::from_ref(&mug));
    // include=deleted still sees deleted candidates, for readers allowed to.
    app.delete(&format!("/v1/products/{mug}"), &app.admin).await.assert_status(204);
    assert_eq!(ids(&app.get("/v1/products?q=mug&include=deleted", &app.admin).await), [mug]);
}

#[tokio::test]
async fn a_record_deleted_while_the_indexer_is_stopped_is_not_returned_and_the_indexer_catches_up() {
    let app = TestApp::with_schema(SCHEMA).await;
    let mug = product(&app, "1", "green mug").await;
    app.index().await;
    assert_eq!(search(&app, "green").await, std::slice::from_ref(&mug));
    // The indexer is "stopped": changes pile up in the outbox.
    app.delete(&format!("/v1/products/{mug}"), &app.admin).await.assert_status(204);
    let bowl = product(&app, "2", "green bowl").await;
    assert!(search(&app, "green").await.is_empty(), "the deleted mug is filtered; the bowl is not indexed yet");
    let before = app.search.position().unwrap();
    // A restart: a new index handle on the same directory resumes from its committed position.
    let path = app.dir.path().join("search");
    let consumed = {
        // Release the writer lock the app holds by reading through a fresh read-only handle first.
        let reopened = SearchIndex::open(&path, false).unwrap();
        assert_eq!(reopened.position().unwrap(), before);
        app.index().await
    };
    assert!(consumed >= 2);
    assert_eq!(search(&app, "green").await, [bowl]);
}

#[tokio::test]
async fn q_pages_and_counts_like_any_list() {
    let app = TestApp::with_schema(SCHEMA).await;
    let mut made = Vec::new();
    for i in 0..7 {
        made.push(product(&app, &i.to_string(), &format!("red thing {i}")).await);
    }
    product(&app, "x", "blue thing").await;
    app.delete(&format!("/v1/products/{}", made[3]), &app.admin).await.assert_status(204);
    app.index().await;
    let first = app.get("/v1/products?q=red&limit=4&count=true", &app.admin).await.json();
    assert_eq!(first["total"], 6);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = app.get(&format!("/v1/products?q=red&limit=4&cursor={cursor}"), &app.admin).await.json();
    let mut all: Vec<Value> = first["items"].as_array().unwrap().clone();
    all.extend(second["items"].as_array().unwrap().iter().cloned());
    let got: Vec<&str> = all.iter().map(|i| i["id"].as_str().unwrap()).collect();
    let expected: Vec<&str> = made.iter().enumerate().filter(|(i, _)| *i != 3).map(|(_, id)| id.as_str()).collect();
    assert_eq!(got, expected);
    assert!(second["next_cursor"].is_null());
    // Bad q.
    app.get("/v1/products?q=", &app.admin).await.assert_problem(400, "invalid-parameter");
    app.create("people", &app.admin, &json!({"name": "x"})).await;
    let other = TestApp::new().await;
    other.get("/v1/secrets?q=x", &other.admin).await.assert_problem(400, "invalid-parameter");
}

#[tokio::test]
async fn search_is_confined_to_the_tenant() {
    let app = TestApp::with_schema(SCHEMA).await;
    let other = app.key("t2", "admin").await;
    app.create("products", &other, &json!({"sku": "1", "name": "secret widget"})).await;
    app.index().await;
    assert!(search(&app, "widget").await.is_empty());
    assert_eq!(ids(&app.get("/v1/products?q=widget", &other).await).len(), 1);
}

#[tokio::test]
async fn the_reconciler_finds_and_repairs_a_document_of_a_deleted_record() {
    let app = TestApp::with_schema(SCHEMA).await;
    let mug = product(&app, "1", "yellow mug").await;
    let cup = product(&app, "2", "yellow cup").await;
    app.index().await;
    // Drift the events cannot explain: the row is marked deleted behind the server's back
    // (no outbox event), and another record's document never got indexed.
    app.raw_execute(&format!(
        "update rec_products set deleted_at = 1, purge_at = 9000000000000000, deletion_id = 'del_x' where id = '{mug}'"
    ))
    .await;
    let found = reconcile(&app.search, app.store.as_ref(), &app.config.schema, false).await.unwrap();
    assert_eq!(found.stale_documents.len(), 1, "{found:?}");
    assert_eq!(found.stale_documents[0].2, mug);
    assert!(found.missing_documents.is_empty());
    let _ = cup;
    let repaired = reconcile(&app.search, app.store.as_ref(), &app.config.schema, true).await.unwrap();
    assert_eq!(repaired.search_drift(), 1);
    let again = reconcile(&app.search, app.store.as_ref(), &app.config.schema, false).await.unwrap();
    assert_eq!(again.search_drift(), 0, "{again:?}");
}

#[tokio::test]
async fn erasure_leaves_no_marker_bytes_in_the_index_directory() {
    let app = TestApp::with_schema(SCHEMA).await;
    let marker = "zqxmarkerquux";
    let person = app.create("people", &app.admin, &json!({"name": format!("Ada {marker}")})).await;
    for i in 0..20 {
        app.create("people", &app.admin, &json!({"name": format!("someone {i}")})).await;
    }
    app.index().await;
    let dir = app.dir.path().join("search");
    // tantivy keeps terms in an FST, which does not store a term as contiguous bytes, so a
    // raw scan alone could pass with the term still there: the term dictionary of every
    // segment (deleted-but-unmerged documents included) is the real check, and the scan
    // covers every other file (stored fields, positions, metadata).
    let bytes_hold_marker = || {
        std::fs::read_dir(&dir).unwrap().flatten().any(|e| {
            std::fs::read(e.path()).is_ok_and(|bytes| bytes.windows(marker.len()).any(|w| w == marker.as_bytes()))
        })
    };
    assert!(
        app.search.holds_term(marker).unwrap(),
        "the term must be indexed before erasure, or the test proves nothing"
    );
    let id = person["id"].as_str().unwrap();
    let receipt = app.post_empty(&format!("/v1/people/{id}:erase"), &app.admin).await;
    receipt.assert_status(200);
    // The request never touches the index: the step is the indexer's, and pending until done.
    assert_eq!(receipt.json()["scrubbed"]["search"], false);
    // Besides the index, the store's own storage step may still be pending (PostgreSQL's
    // vacuum waits for every older snapshot in the cluster, which other tests may hold).
    let pending = receipt.json()["pending"].as_array().cloned().unwrap_or_default();
    assert!(pending.contains(&json!("search")), "{pending:?}");
    assert!(
        pending.iter().all(|step| ["search", "wal", "vacuum"].contains(&step.as_str().unwrap_or(""))),
        "{pending:?}"
    );
    app.index().await;
    assert!(!app.search.holds_term(marker).unwrap(), "erased terms must be gone from every segment");
    assert!(!bytes_hold_marker());
    let done = app.post_empty(&format!("/v1/people/{id}:erase"), &app.admin).await.json();
    assert_eq!(done["scrubbed"]["search"], json!(true));
    assert!(!done["pending"].as_array().is_some_and(|p| p.contains(&json!("search"))), "{done}");
    app.index().await;
    assert!(!app.search.holds_term(marker).unwrap());
    assert!(!bytes_hold_marker());
    assert!(ids(&app.get(&format!("/v1/people?q={marker}"), &app.admin).await).is_empty());
}

/// The documents the index holds, by id (no post-filter: the index itself).
fn indexed(app: &TestApp) -> Vec<String> {
    let mut ids: Vec<String> = app.search.all_documents().unwrap().into_iter().map(|(_, _, id)| id).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn documents_leave_the_index_at_deletion_and_hard_deletes_and_purges_move_its_position() {
    let app = TestApp::with_schema(SCHEMA).await;
    let mug = product(&app, "1", "red mug").await;
    let cup = product(&app, "2", "red cup").await;
    let session =
        app.create("sessions", &app.admin, &json!({"label": "red session"})).await["id"].as_str().unwrap().to_string();
    app.index().await;
    let mut all = vec![mug.clone(), cup.clone(), session.clone()];
    all.sort();
    assert_eq!(indexed(&app), all);
    // A soft delete takes the document out; the later purge has nothing left to remove.
    app.delete(&format!("/v1/products/{mug}"), &app.admin).await.assert_status(204);
    app.index().await;
    assert!(!indexed(&app).contains(&mug));
    app.post_empty(&format!("/v1/products/{mug}:purge"), &app.admin).await.assert_status(204);
    // A hard delete takes the document out at once.
    app.delete(&format!("/v1/sessions/{session}"), &app.admin).await.assert_status(204);
    app.index().await;
    assert_eq!(indexed(&app), [cup]);
    // Every event was consumed, the skipped purge included: the position is the last one.
    assert_eq!(app.search.position().unwrap(), app.store.last_event_seq().await.unwrap());
}

/// The ids of every page of `q`, and the first page's total.
async fn all_pages(app: &TestApp, q: &str) -> (Vec<String>, u64) {
    let mut got = Vec::new();
    let mut url = format!("/v1/products?{q}&count=true");
    let mut total = None;
    loop {
        let page = app.get(&url, &app.admin).await;
        page.assert_status(200);
        let page = page.json();
        total = total.or_else(|| page["total"].as_u64());
        got.extend(page["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(cursor) => url = format!("/v1/products?{q}&cursor={cursor}"),
            None => return (got, total.expect("a total on the first page")),
        }
    }
}

#[tokio::test]
async fn many_matches_are_walked_against_the_list_and_few_are_looked_up_and_both_page_like_the_list() {
    let app = TestApp::with_schema(SCHEMA).await;
    let mut red = Vec::new();
    for i in 0..90 {
        red.push(product(&app, &format!("r{i}"), &format!("red thing {i}")).await);
    }
    for i in 0..30 {
        product(&app, &format!("b{i}"), &format!("blue thing {i}")).await;
    }
    // Some matches leave the default list: deleted, archived.
    for id in red.iter().skip(4).step_by(11) {
        app.post(&format!("/v1/products/{id}:archive"), &app.admin, &json!({})).await.assert_status(200);
    }
    for id in red.iter().step_by(9) {
        app.delete(&format!("/v1/products/{id}"), &app.admin).await.assert_status(204);
    }
    app.index().await;
    let deleted: Vec<&String> = red.iter().step_by(9).collect();
    let archived: Vec<&String> = red.iter().skip(4).step_by(11).collect();
    let mut active: Vec<String> =
        red.iter().filter(|id| !deleted.contains(id) && !archived.contains(id)).cloned().collect();
    active.sort();

    // 90 of 120 documents match: the store is given fingerprints.
    let many = app.search.candidates("t1", "products", "red", 7, false).unwrap();
    assert!(matches!(many, tombstone_domain::query::Candidates::Fingerprints(_)), "{many:?}");
    let (got, total) = all_pages(&app, "q=red&limit=7").await;
    assert_eq!(got, active, "every active match once, in id order");
    assert_eq!(total, active.len() as u64);
    // Sorted another way, filtered, and with the archived ones.
    let (got, _) = all_pages(&app, "q=red&limit=5&sort=-created_at").await;
    let mut newest_first = red.iter().filter(|id| active.contains(id)).cloned().collect::<Vec<_>>();
    newest_first.reverse();
    assert_eq!(got, newest_first);
    let (got, total) = all_pages(&app, "q=red&limit=6&include=archived").await;
    assert_eq!(total, (active.len() + archived.iter().filter(|id| !deleted.contains(id)).count()) as u64);
    assert!(got.iter().all(|id| !deleted.contains(&id)), "never a deleted record");
    let sku = app.get(&format!("/v1/products/{}", active[3]), &app.admin).await.json()["sku"].clone();
    let (got, total) = all_pages(&app, &format!("q=red&filter[sku]={}", sku.as_str().unwrap())).await;
    assert_eq!((got, total), (vec![active[3].clone()], 1));

    // One match: the store is given its id.
    let n = red.iter().position(|id| *id == active[5]).unwrap();
    let one = app.search.candidates("t1", "products", &format!("\"red thing {n}\""), 7, false).unwrap();
    assert_eq!(one, tombstone_domain::query::Candidates::Ids(vec![active[5].clone()]));
    let (got, total) = all_pages(&app, &format!("q=%22red%20thing%20{n}%22")).await;
    assert_eq!((got, total), (vec![active[5].clone()], 1));
}

#[tokio::test]
async fn an_index_of_the_older_format_is_replaced_and_filled_from_the_database() {
    let app = TestApp::with_schema(SCHEMA).await;
    let mug = product(&app, "1", "green mug").await;
    // An index as the release before wrote it: tenant and collection terms, no fingerprints.
    let old = app.dir.path().join("old-index");
    {
        use tantivy::schema::{STORED, STRING, TEXT};
        let mut b = tantivy::schema::Schema::builder();
        let key = b.add_text_field("key", STRING);
        let tenant = b.add_text_field("tenant", STRING);
        let collection = b.add_text_field("collection", STRING);
        let id = b.add_text_field("id", STRING | STORED);
        let text = b.add_text_field("text", TEXT);
        std::fs::create_dir_all(&old).unwrap();
        let index = tantivy::Index::create_in_dir(&old, b.build()).unwrap();
        let mut writer: tantivy::IndexWriter = index.writer(20_000_000).unwrap();
        let k = format!("t1\u{1f}products\u{1f}{mug}");
        writer
            .add_document(
                tantivy::doc!(key => k.clone(), tenant => "t1", collection => "products", id => k, text => "green mug"),
            )
            .unwrap();
        writer.commit().unwrap();
    }
    // Read-only, it is refused with what to do.
    let refused = SearchIndex::open(&old, false).unwrap_err().to_string();
    assert!(refused.contains("older format") && refused.contains("reindex"), "{refused}");
    // A writer replaces it; until it is filled, a search is "being rebuilt", never a wrong answer.
    let index = SearchIndex::open(&old, true).unwrap();
    let waiting = index.candidates("t1", "products", "green", 50, false).unwrap_err();
    assert!(matches!(waiting, tombstone_server::search::SearchError::Rebuilding), "{waiting}");
    let bowl = product(&app, "2", "green bowl").await;
    assert_eq!(index.catch_up(app.store.as_ref(), &app.config.schema).await.unwrap(), 2, "filled with both records");
    let found = index.candidates("t1", "products", "green", 50, false).unwrap();
    let tombstone_domain::query::Candidates::Ids(mut found) = found else { panic!("{found:?}") };
    found.sort();
    let mut want = vec![mug, bowl];
    want.sort();
    assert_eq!(found, want);
    // Reopened, it is the new format: nothing to rebuild.
    drop(index);
    let reopened = SearchIndex::open(&old, true).unwrap();
    assert!(reopened.candidates("t1", "products", "green", 50, false).is_ok());
}

#[tokio::test]
async fn a_search_before_a_new_index_is_filled_is_503_then_answers() {
    let app = TestApp::with_schema(SCHEMA).await;
    let mug = product(&app, "1", "green mug").await;
    // The app's index is new: until the indexer has filled it from the database, a search
    // would miss records, so it says so instead.
    app.get("/v1/products?q=green", &app.admin).await.assert_problem(503, "unavailable");
    // A list without q does not need the index.
    app.get("/v1/products", &app.admin).await.assert_status(200);
    app.index().await;
    assert_eq!(search(&app, "green").await, [mug]);
}
