//! Deletion planning: what a DELETE will touch, as a value, before anything changes.
//!
//! [`plan`] walks the relation graph from the root through every `ref` field that points
//! at a record being deleted: `cascade` children join the deletion (in the same
//! transaction), `eventual` children join it too but are deleted later by a worker,
//! `orphan` children stay active and are listed, and `restrict` children that would stay
//! active block the whole delete — anywhere in the tree. The same plan answers a dry run
//! and is what the store executes, so the two cannot disagree.
//!
//! A plan can be bounded ([`plan_from_bounded`]): past a number of cascade children the
//! rest of the cascade is planned as an eventual one (worked through in batches after the
//! DELETE commits), so a huge cascade never holds the only writer for its whole length.
//! An erasure walks the same graph ([`plan_erasure`]) with the rules of erasure: cascade
//! and eventual children — active or already in the trash — are erased with their parent
//! at once, restrict children block, orphan children stay.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::config::{FieldType, OnDelete, Schema};

/// How many blockers a 409 lists (their total is given too).
pub const MAX_BLOCKERS: usize = 100;

/// How many records each list of a dry run shows (their totals are given too).
pub const MAX_LISTED: usize = 100;

/// A record named by collection and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RecordRef {
    pub collection: String,
    pub id: String,
}

impl RecordRef {
    #[must_use]
    pub fn new(collection: &str, id: &str) -> Self {
        Self { collection: collection.to_string(), id: id.to_string() }
    }
}

/// A relation into a collection: `child_collection.field` refers to a parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub child_collection: String,
    pub field: String,
    pub on_delete: OnDelete,
}

/// Every relation pointing at `parent_collection`, in schema order.
#[must_use]
pub fn edges_into(schema: &Schema, parent_collection: &str) -> Vec<Edge> {
    let mut edges = Vec::new();
    for c in schema.collections.values() {
        for f in c.fields.values() {
            if let FieldType::Ref { collection, on_delete } = &f.ty
                && collection == parent_collection
            {
                edges.push(Edge { child_collection: c.name.clone(), field: f.name.clone(), on_delete: *on_delete });
            }
        }
    }
    edges
}

/// Finds active children; implemented by each store over its transaction. Its calls are
/// futures so that a store whose queries wait on the network (PostgreSQL) plans with the
/// same code as one whose queries never wait (SQLite, the tests' graphs: see
/// [`crate::ready::now`]).
pub trait ChildFinder {
    type Error;
    /// `(child id, parent id)` of the active records of `child_collection` (in the
    /// caller's tenant) whose `field` is one of `parent_ids`. Called once per relation and
    /// level of the tree with all of that level's parents, so a cascade over thousands of
    /// children costs a handful of set-based queries, not one per child.
    ///
    /// # Errors
    /// The store failed.
    fn active_children(
        &mut self,
        child_collection: &str,
        field: &str,
        parent_ids: &[String],
    ) -> impl Future<Output = Result<Vec<(String, String)>, Self::Error>>;

    /// Like [`ChildFinder::active_children`], but soft-deleted children too: what an
    /// erasure takes along through cascade relations (a cart item in the trash is still
    /// the erased customer's data).
    ///
    /// # Errors
    /// The store failed.
    fn all_children(
        &mut self,
        child_collection: &str,
        field: &str,
        parent_ids: &[String],
    ) -> impl Future<Output = Result<Vec<(String, String)>, Self::Error>>;
}

/// How a walk over the relation graph treats what it finds.
#[derive(Debug, Clone, Copy)]
struct Walk {
    /// Cascade children taken into the immediate part at most (beyond: eventual).
    max_children: usize,
    /// An erasure: cascade and eventual children, active or deleted, all go at once.
    erase: bool,
}

/// An eventual relation to work through after the immediate part has committed: the
/// active children of `parent` through `child_collection.field`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventualEdge {
    pub child_collection: String,
    pub field: String,
    pub parent: RecordRef,
}

/// Where a deletion operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeletionStatus {
    /// An eventual cascade still works through its relations.
    Pending,
    /// Everything it deletes is deleted (or it was restored).
    Done,
}

impl DeletionStatus {
    /// The stored and shown form.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Done => "done",
        }
    }

    /// The stored form back (`None` for anything else).
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "done" => Some(Self::Done),
            _ => None,
        }
    }
}

/// The plan of one DELETE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeletionPlan {
    pub root: Option<RecordRef>,
    /// Deleted in the DELETE's transaction: the root first, then its cascade.
    pub immediate: Vec<RecordRef>,
    /// Deleted afterwards by the eventual-cascade worker (with their own cascades).
    pub eventual: Vec<RecordRef>,
    /// Where the worker starts: eventual relations of records deleted immediately.
    pub eventual_edges: Vec<EventualEdge>,
    /// Active `restrict` children that would be left pointing at deleted records.
    pub blockers: Vec<RecordRef>,
    pub blockers_total: u64,
    /// Active `orphan` children that keep pointing at deleted records.
    pub orphaned: Vec<RecordRef>,
}

impl DeletionPlan {
    /// Everything the delete takes: the root first, then the cascade, then the eventual part.
    #[must_use]
    pub fn would_delete(&self) -> Vec<RecordRef> {
        self.immediate.iter().chain(&self.eventual).cloned().collect()
    }

    /// Records per collection, over everything the delete takes.
    #[must_use]
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for r in self.immediate.iter().chain(&self.eventual) {
            *counts.entry(r.collection.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Whether a `restrict` relation blocks the delete.
    #[must_use]
    pub fn is_blocked(&self) -> bool {
        self.blockers_total > 0
    }
}

/// Plans the deletion of `root` (an active record).
///
/// # Errors
/// The child finder failed.
pub async fn plan<F: ChildFinder>(schema: &Schema, root: RecordRef, finder: &mut F) -> Result<DeletionPlan, F::Error> {
    plan_from(schema, &[root], finder).await
}

/// Plans the deletion of several records at once (the eventual worker's batches).
///
/// # Errors
/// The child finder failed.
pub async fn plan_from<F: ChildFinder>(
    schema: &Schema,
    roots: &[RecordRef],
    finder: &mut F,
) -> Result<DeletionPlan, F::Error> {
    walk(schema, roots, finder, Walk { max_children: usize::MAX, erase: false }).await
}

/// Plans the deletion of `roots` with at most `max_children` cascade children in the
/// immediate part: past that, the children still to take (and everything below them) are
/// planned as eventual, with an eventual edge for each relation and parent they hang
/// from, so the worker deletes them in batches after the DELETE. What the delete takes in
/// the end, and what blocks it, is the same as without the bound.
///
/// # Errors
/// The child finder failed.
pub async fn plan_from_bounded<F: ChildFinder>(
    schema: &Schema,
    roots: &[RecordRef],
    finder: &mut F,
    max_children: usize,
) -> Result<DeletionPlan, F::Error> {
    walk(schema, roots, finder, Walk { max_children, erase: false }).await
}

/// Plans the erasure of `root` (a record, active or deleted): `immediate` is everything
/// erased with it — the root, then every record reached through cascade and eventual
/// relations, active or soft-deleted (an erasure is at once, never eventual, and a child
/// that only exists through its parent is the same person's data) — `blockers` the active
/// restrict children left behind, `orphaned` the active orphan children that stay,
/// keeping their ref to an erased record.
///
/// # Errors
/// The child finder failed.
pub async fn plan_erasure<F: ChildFinder>(
    schema: &Schema,
    root: RecordRef,
    finder: &mut F,
) -> Result<DeletionPlan, F::Error> {
    walk(schema, &[root], finder, Walk { max_children: usize::MAX, erase: true }).await
}

async fn walk<F: ChildFinder>(
    schema: &Schema,
    roots: &[RecordRef],
    finder: &mut F,
    walk: Walk,
) -> Result<DeletionPlan, F::Error> {
    // Level by level over cascade and eventual edges; `seen` guards cycles in the schema
    // and in the data.
    let mut seen: HashSet<RecordRef> = roots.iter().cloned().collect();
    let mut immediate: Vec<RecordRef> = roots.to_vec();
    let mut eventual: Vec<RecordRef> = Vec::new();
    let mut eventual_edges = Vec::new();
    let mut restrict_children: Vec<RecordRef> = Vec::new();
    let mut orphan_children: Vec<RecordRef> = Vec::new();
    // (record, reached through an eventual edge)
    let mut level: Vec<(RecordRef, bool)> = roots.iter().map(|r| (r.clone(), false)).collect();
    while !level.is_empty() {
        // Group this level's parents by collection and by whether they are eventual.
        let mut groups: BTreeMap<(String, bool), Vec<String>> = BTreeMap::new();
        for (r, later) in &level {
            groups.entry((r.collection.clone(), *later)).or_default().push(r.id.clone());
        }
        let mut next = Vec::new();
        for ((parent_collection, parent_eventual), parent_ids) in groups {
            for edge in edges_into(schema, &parent_collection) {
                let takes_along = matches!(edge.on_delete, OnDelete::Cascade | OnDelete::Eventual);
                let pairs = if walk.erase && takes_along {
                    finder.all_children(&edge.child_collection, &edge.field, &parent_ids).await?
                } else {
                    finder.active_children(&edge.child_collection, &edge.field, &parent_ids).await?
                };
                match edge.on_delete {
                    OnDelete::Restrict => {
                        restrict_children
                            .extend(pairs.iter().map(|(id, _)| RecordRef::new(&edge.child_collection, id)));
                    }
                    OnDelete::Orphan => {
                        orphan_children.extend(pairs.iter().map(|(id, _)| RecordRef::new(&edge.child_collection, id)));
                    }
                    OnDelete::Cascade | OnDelete::Eventual if walk.erase => {
                        for (id, _) in pairs {
                            let child = RecordRef::new(&edge.child_collection, &id);
                            if seen.insert(child.clone()) {
                                immediate.push(child.clone());
                                next.push((child, false));
                            }
                        }
                    }
                    OnDelete::Cascade | OnDelete::Eventual => {
                        let later = parent_eventual || edge.on_delete == OnDelete::Eventual;
                        if edge.on_delete == OnDelete::Eventual && !parent_eventual {
                            let mut parents: Vec<&String> = pairs.iter().map(|(_, p)| p).collect();
                            parents.sort();
                            parents.dedup();
                            for p in parents {
                                eventual_edges.push(EventualEdge {
                                    child_collection: edge.child_collection.clone(),
                                    field: edge.field.clone(),
                                    parent: RecordRef::new(&parent_collection, p),
                                });
                            }
                        }
                        // Parents (deleted at once) some of whose children went past the
                        // bound: the worker takes those children through this relation.
                        let mut overflowed: Vec<String> = Vec::new();
                        for (id, parent) in pairs {
                            let child = RecordRef::new(&edge.child_collection, &id);
                            if seen.insert(child.clone()) {
                                let eventual_here = later || immediate.len() - roots.len() >= walk.max_children;
                                if eventual_here {
                                    if !later {
                                        overflowed.push(parent);
                                    }
                                    eventual.push(child.clone());
                                } else {
                                    immediate.push(child.clone());
                                }
                                next.push((child, eventual_here));
                            }
                        }
                        overflowed.sort();
                        overflowed.dedup();
                        for p in overflowed {
                            eventual_edges.push(EventualEdge {
                                child_collection: edge.child_collection.clone(),
                                field: edge.field.clone(),
                                parent: RecordRef::new(&parent_collection, &p),
                            });
                        }
                    }
                }
            }
        }
        level = next;
    }
    let mut blockers: Vec<RecordRef> = Vec::new();
    let mut blocker_set = HashSet::new();
    for r in restrict_children {
        if !seen.contains(&r) && blocker_set.insert(r.clone()) {
            blockers.push(r);
        }
    }
    let blockers_total = blockers.len() as u64;
    blockers.truncate(MAX_BLOCKERS);
    let mut orphaned = Vec::new();
    let mut orphan_set = HashSet::new();
    for r in orphan_children {
        if !seen.contains(&r) && orphan_set.insert(r.clone()) {
            orphaned.push(r);
        }
    }
    Ok(DeletionPlan {
        root: roots.first().cloned(),
        immediate,
        eventual,
        eventual_edges,
        blockers,
        blockers_total,
        orphaned,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::ready::now;

    /// Children by (collection, field, parent id): active ones, and soft-deleted ones.
    #[derive(Default)]
    struct Graph(HashMap<(String, String, String), Vec<String>>, HashMap<(String, String, String), Vec<String>>);

    impl Graph {
        fn add(&mut self, collection: &str, field: &str, parent: &str, id: &str) {
            self.0.entry((collection.into(), field.into(), parent.into())).or_default().push(id.into());
        }

        fn add_deleted(&mut self, collection: &str, field: &str, parent: &str, id: &str) {
            self.1.entry((collection.into(), field.into(), parent.into())).or_default().push(id.into());
        }
    }

    impl ChildFinder for Graph {
        type Error = Infallible;
        async fn all_children(
            &mut self,
            c: &str,
            f: &str,
            parents: &[String],
        ) -> Result<Vec<(String, String)>, Infallible> {
            let mut all = self.active_children(c, f, parents).await?;
            all.extend(parents.iter().flat_map(|p| {
                let ids = self.1.get(&(c.into(), f.into(), p.clone())).cloned().unwrap_or_default();
                ids.into_iter().map(|id| (id, p.clone()))
            }));
            Ok(all)
        }
        async fn active_children(
            &mut self,
            c: &str,
            f: &str,
            parents: &[String],
        ) -> Result<Vec<(String, String)>, Infallible> {
            Ok(parents
                .iter()
                .flat_map(|p| {
                    let ids = self.0.get(&(c.into(), f.into(), p.clone())).cloned().unwrap_or_default();
                    ids.into_iter().map(|id| (id, p.clone()))
                })
                .collect())
        }
    }

    fn schema() -> Schema {
        let toml = r#"
[collections.categories.fields]
parent_id = { type = "ref", collection = "categories", on_delete = "cascade" }
[collections.products.fields]
category_id = { type = "ref", collection = "categories", on_delete = "restrict" }
[collections.carts.fields]
product_id = { type = "ref", collection = "products", on_delete = "cascade" }
[collections.reviews.fields]
product_id = { type = "ref", collection = "products", on_delete = "orphan" }
[collections.views.fields]
product_id = { type = "ref", collection = "products", on_delete = "eventual" }
[collections.view_notes.fields]
view_id = { type = "ref", collection = "views", on_delete = "cascade" }
"#;
        Config::parse(toml, Path::new(".")).unwrap().schema.as_ref().clone()
    }

    #[test]
    fn cascade_orphan_and_eventual() {
        let mut g = Graph::default();
        g.add("carts", "product_id", "p1", "c1");
        g.add("carts", "product_id", "p1", "c2");
        g.add("reviews", "product_id", "p1", "r1");
        g.add("views", "product_id", "p1", "v1");
        g.add("view_notes", "view_id", "v1", "n1");
        let plan = now(plan(&schema(), RecordRef::new("products", "p1"), &mut g)).unwrap();
        assert_eq!(
            plan.immediate,
            vec![RecordRef::new("products", "p1"), RecordRef::new("carts", "c1"), RecordRef::new("carts", "c2")]
        );
        assert_eq!(plan.eventual, vec![RecordRef::new("views", "v1"), RecordRef::new("view_notes", "n1")]);
        assert_eq!(plan.eventual_edges.len(), 1);
        assert_eq!(plan.orphaned, vec![RecordRef::new("reviews", "r1")]);
        assert!(!plan.is_blocked());
        assert_eq!(plan.counts()["carts"], 2);
        assert_eq!(plan.would_delete()[0], RecordRef::new("products", "p1"));
    }

    #[test]
    fn restrict_anywhere_in_the_tree_blocks_and_cycles_end() {
        let mut g = Graph::default();
        // c1 -> c2 -> c1 (a cycle in the data), c2 has a product.
        g.add("categories", "parent_id", "c1", "c2");
        g.add("categories", "parent_id", "c2", "c1");
        g.add("products", "category_id", "c2", "p1");
        let plan = now(plan(&schema(), RecordRef::new("categories", "c1"), &mut g)).unwrap();
        assert_eq!(plan.immediate.len(), 2);
        assert!(plan.is_blocked());
        assert_eq!(plan.blockers, vec![RecordRef::new("products", "p1")]);
    }

    #[test]
    fn blockers_are_capped_but_counted() {
        let mut g = Graph::default();
        for i in 0..150 {
            g.add("products", "category_id", "c1", &format!("p{i}"));
        }
        let plan = now(plan(&schema(), RecordRef::new("categories", "c1"), &mut g)).unwrap();
        assert_eq!(plan.blockers.len(), MAX_BLOCKERS);
        assert_eq!(plan.blockers_total, 150);
    }

    #[test]
    fn a_bounded_plan_moves_the_rest_of_the_cascade_to_the_eventual_part() {
        let mut g = Graph::default();
        for i in 0..5 {
            g.add("carts", "product_id", "p1", &format!("c{i}"));
        }
        g.add("reviews", "product_id", "p1", "r1");
        let unbounded = now(plan(&schema(), RecordRef::new("products", "p1"), &mut g)).unwrap();
        let bounded = now(plan_from_bounded(&schema(), &[RecordRef::new("products", "p1")], &mut g, 2)).unwrap();
        assert_eq!(bounded.immediate.len(), 3, "the root and two children: {bounded:?}");
        assert_eq!(bounded.eventual.len(), 3);
        assert_eq!(
            bounded.eventual_edges,
            vec![EventualEdge {
                child_collection: "carts".into(),
                field: "product_id".into(),
                parent: RecordRef::new("products", "p1")
            }]
        );
        // The same records go in the end, and the same ones stay.
        let mut all = bounded.would_delete();
        all.sort();
        let mut expected = unbounded.would_delete();
        expected.sort();
        assert_eq!(all, expected);
        assert_eq!(bounded.counts(), unbounded.counts());
        assert_eq!(bounded.orphaned, unbounded.orphaned);
        // Under the bound nothing changes.
        assert_eq!(
            now(plan_from_bounded(&schema(), &[RecordRef::new("products", "p1")], &mut g, 5)).unwrap(),
            unbounded
        );
    }

    #[test]
    fn an_erasure_takes_cascade_and_eventual_children_at_once_deleted_ones_too() {
        let mut g = Graph::default();
        g.add("carts", "product_id", "p1", "c1");
        g.add_deleted("carts", "product_id", "p1", "c2");
        g.add("reviews", "product_id", "p1", "r1");
        g.add_deleted("reviews", "product_id", "p1", "r2");
        g.add("views", "product_id", "p1", "v1");
        g.add("view_notes", "view_id", "v1", "n1");
        let plan = now(plan_erasure(&schema(), RecordRef::new("products", "p1"), &mut g)).unwrap();
        assert_eq!(
            plan.immediate,
            vec![
                RecordRef::new("products", "p1"),
                RecordRef::new("carts", "c1"),
                RecordRef::new("carts", "c2"),
                RecordRef::new("views", "v1"),
                RecordRef::new("view_notes", "n1"),
            ]
        );
        assert!(plan.eventual.is_empty() && plan.eventual_edges.is_empty(), "{plan:?}");
        assert_eq!(plan.orphaned, vec![RecordRef::new("reviews", "r1")], "orphans stay; deleted ones are not listed");
        assert!(!plan.is_blocked());

        // An active restrict child blocks, a deleted one does not.
        let mut g = Graph::default();
        g.add_deleted("products", "category_id", "k1", "p9");
        assert!(!now(plan_erasure(&schema(), RecordRef::new("categories", "k1"), &mut g)).unwrap().is_blocked());
        g.add("products", "category_id", "k1", "p1");
        let plan = now(plan_erasure(&schema(), RecordRef::new("categories", "k1"), &mut g)).unwrap();
        assert_eq!((plan.blockers.clone(), plan.blockers_total), (vec![RecordRef::new("products", "p1")], 1));
    }
}
