//! A search's candidates, either way a store is given them: a list narrowed by
//! [`Candidates::Fingerprints`] (the store walks the list in order and keeps the rows whose
//! id is a match) must page, sort, filter and count exactly like the same list narrowed by
//! [`Candidates::Ids`] (the store looks each id up) — and never show a deleted or archived
//! record by default, whichever records the index proposes.

use std::collections::BTreeSet;

use proptest::prelude::*;
use tombstone_domain::lifecycle::ArchiveRequest;
use tombstone_domain::query::{ArchivedScope, Candidates, Fingerprints, Position, SortValue, fingerprint};

use super::*;

const SEARCHED: &str = r#"
[collections.items]

[collections.items.fields]
color = { type = "string" }
rank = { type = "integer" }
"#;

const COLORS: [&str; 3] = ["red", "green", "blue"];

/// One record of the data set: its colour, rank, whether it is a match of the search, and
/// whether it ends deleted or archived.
#[derive(Debug, Clone)]
struct Item {
    color: Option<usize>,
    rank: i64,
    matched: bool,
    fate: Fate,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Active,
    Deleted,
    Archived,
}

fn item() -> impl Strategy<Value = Item> {
    (
        prop::option::of(0..COLORS.len()),
        0_i64..6,
        any::<bool>(),
        prop_oneof![6 => Just(Fate::Active), 1 => Just(Fate::Deleted), 1 => Just(Fate::Archived)],
    )
        .prop_map(|(color, rank, matched, fate)| Item { color, rank, matched, fate })
}

/// A list request: sort, page size, colour filter, scope.
#[derive(Debug, Clone)]
struct Request {
    sort: Sort,
    limit: u32,
    color: Option<usize>,
    scope: DeletedScope,
    archived: ArchivedScope,
}

fn request() -> impl Strategy<Value = Request> {
    let sort = prop_oneof![
        Just(SortKey::Id),
        Just(SortKey::CreatedAt),
        Just(SortKey::Field("rank".into())),
        Just(SortKey::Field("color".into())),
    ];
    (
        sort,
        any::<bool>(),
        1_u32..7,
        prop::option::of(0..COLORS.len()),
        prop_oneof![Just(DeletedScope::Active), Just(DeletedScope::All), Just(DeletedScope::Deleted)],
        prop_oneof![Just(ArchivedScope::Exclude), Just(ArchivedScope::Include), Just(ArchivedScope::Only)],
    )
        .prop_map(|(key, descending, limit, color, scope, archived)| Request {
            sort: Sort { key, descending },
            limit,
            color,
            scope,
            archived,
        })
}

/// Every page of `query`, following cursors: the ids in order and the first page's total.
async fn pages(store: &Arc<dyn Store>, c: &Arc<Collection>, mut query: ListQuery) -> (Vec<String>, Option<u64>) {
    let mut ids = Vec::new();
    let mut total = None;
    for page_number in 0.. {
        query.count = page_number == 0;
        let page = store.list_records("t1", c, &query).await.expect("list");
        if page_number == 0 {
            total = page.total;
        }
        assert!(page.items.len() <= query.limit as usize, "a page holds at most its limit");
        ids.extend(page.items.iter().map(|r| r.id.clone()));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
        assert!(page_number < 200, "paging does not end");
    }
    (ids, total)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn a_list_narrowed_by_fingerprints_is_the_list_narrowed_by_ids(
        items in prop::collection::vec(item(), 0..60),
        requests in prop::collection::vec(request(), 1..5),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(each_store(|store| {
            let (items, requests) = (items.clone(), requests.clone());
            async move {
                let sch = schema(SEARCHED);
                store.migrate(&sch).await.unwrap();
                let c = coll(&sch, "items");
                let mut matches = Vec::new();
                for (n, it) in items.iter().enumerate() {
                    let id = format!("i{n:02}");
                    let mut vals = vec![("rank", FieldValue::Integer(it.rank))];
                    if let Some(color) = it.color {
                        vals.push(("color", s(COLORS[color])));
                    }
                    let at_n = at(i64::try_from(n).unwrap() * SECOND);
                    let record = new_record("t1", &c, &id, values(&vals), at_n);
                    store.create_record(&actor("t1"), &c, record, None).await.unwrap();
                    match it.fate {
                        Fate::Active => {}
                        Fate::Deleted => {
                            store.delete_record(&actor("t1"), &c, &id, delete_req(&format!("del_{n}")), at_n).await.unwrap();
                        }
                        Fate::Archived => {
                            let request = ArchiveRequest::Archive { reason: None };
                            store.archive_record(&actor("t1"), &c, &id, request, None, at_n).await.unwrap();
                        }
                    }
                    if it.matched {
                        matches.push(id);
                    }
                }
                // Another tenant's record with a matching id is never listed.
                let other = new_record("t2", &c, "i00", values(&[("rank", FieldValue::Integer(1))]), at(0));
                store.create_record(&actor("t2"), &c, other, None).await.unwrap();
                for r in &requests {
                    let base = ListQuery {
                        sort: r.sort.clone(),
                        limit: r.limit,
                        scope: r.scope,
                        archived: r.archived,
                        filters: r.color.map(|color| FieldFilter {
                            field: "color".into(),
                            value: s(COLORS[color]),
                            case_insensitive: false,
                        }).into_iter().collect(),
                        ..ListQuery::default()
                    };
                    let by_ids = ListQuery { candidates: Some(Candidates::Ids(matches.clone())), ..base.clone() };
                    // Estimated as one row a match: the walk's first batch is about a page, and
                    // most lists take several.
                    let fps = Fingerprints::new(matches.iter().map(|id| fingerprint(id)).collect(), 0);
                    let by_fps = ListQuery { candidates: Some(Candidates::Fingerprints(Arc::new(fps))), ..base.clone() };
                    let (expected, expected_total) = pages(&store, &c, by_ids).await;
                    let (walked, walked_total) = pages(&store, &c, by_fps).await;
                    assert_eq!(walked, expected, "the pages of {r:?}");
                    assert_eq!(walked_total, expected_total, "the total of {r:?}");
                    // Both are the unnarrowed list's matches, in its order.
                    let (all, _) = pages(&store, &c, base).await;
                    let matched: BTreeSet<&String> = matches.iter().collect();
                    let want: Vec<String> = all.into_iter().filter(|id| matched.contains(id)).collect();
                    assert_eq!(walked, want, "the matches of the plain list of {r:?}");
                    assert_eq!(walked_total, Some(want.len() as u64));
                    if r.scope == DeletedScope::Active && r.archived == ArchivedScope::Exclude {
                        for id in &walked {
                            let n: usize = id[1..].parse().unwrap();
                            assert_eq!(items[n].fate, Fate::Active, "{id} is listed by default");
                        }
                    }
                }
                // A cursor in the middle of a walk: the rest of the list from there.
                let fps = Fingerprints::new(matches.iter().map(|id| fingerprint(id)).collect(), items.len());
                let after = matches.first().map(|id| Position { value: SortValue::Text(id.clone()), id: id.clone() });
                let rest = ListQuery {
                    candidates: Some(Candidates::Fingerprints(Arc::new(fps))),
                    after,
                    limit: 500,
                    ..ListQuery::default()
                };
                let page = store.list_records("t1", &c, &rest).await.unwrap();
                for r in &page.items {
                    assert!(matches.first().is_some_and(|first| &r.id > first));
                }
            }
        }));
    }
}
