//! Full-text search over `search = true` fields: an embedded tantivy index fed by the
//! outbox, and the reconciler that compares it with the database.
//!
//! The index is only ever a list of candidates: every search is post-filtered by the
//! database (the list query runs with `id in (candidates)` and all its usual filters), so a
//! deleted, purged or erased record never appears even while the index lags. The indexer
//! consumes the outbox in commit order and keeps its position in the index's own commit
//! payload, so after a crash it resumes exactly where its last commit ended. For each event
//! it indexes the record's *current* state (read from the store), which makes replays
//! harmless and means erased values can never be re-introduced.
//!
//! An erasure's `search` step is durable work (a job row written with the erasure): once
//! the indexer has passed the `record.erased` event it rewrites the segments that still
//! held the document and marks the step done — on the indexer's thread, never on a
//! request's.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tantivy::collector::{Collector, DocSetCollector, SegmentCollector};
use tantivy::columnar::{Column, ColumnIndex};
use tantivy::directory::{Directory as _, MmapDirectory};
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, TermQuery, Weight};
use tantivy::schema::{FAST, Field, IndexRecordOption, STORED, STRING, Schema as IndexSchema, TEXT, Value as _};
use tantivy::{
    COLLECT_BLOCK_BUFFER_LEN, DocId, Index, IndexReader, IndexWriter, ReloadPolicy, Score, Searcher, SegmentOrdinal,
    SegmentReader, TantivyDocument, Term, doc,
};
use tombstone_domain::config::{Collection, DeleteMode, FieldType, Schema};
use tombstone_domain::query::{Candidates, Fingerprints, fingerprint};
use tombstone_domain::record::{FieldValue, Record};
use tombstone_store::{Store, StoreError};

/// Looking one candidate up by id costs about as much as walking this many rows of a
/// list's index (measured: docs/PERFORMANCE.md, "Search at the speed of a list").
const LOOKUP_COST_IN_ROWS: usize = 4;
/// Outbox events read per batch.
const BATCH: u32 = 500;
/// At most this many events are applied between two commits of a long backlog.
const COMMIT_EVERY: usize = 20_000;

/// Why the index failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("search index directory: {0}")]
    Directory(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the search index is opened read-only")]
    ReadOnly,
    #[error("the search index is being rebuilt from the database")]
    Rebuilding,
}

#[derive(Clone, Copy)]
struct Fields {
    key: Field,
    /// A tenant's collection as one term: a search intersects the text's postings with one
    /// list, not two.
    scope: Field,
    id: Field,
    text: Field,
    /// The id's fingerprint ([`fingerprint`]), high and low halves, as fast fields: the
    /// candidates of a search with many matches are read from them, not from stored
    /// documents.
    fp_hi: Field,
    fp_lo: Field,
}

/// The index.
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    writer: Option<Mutex<IndexWriter>>,
    /// Set when a rollback after a failed write could not start a new writer.
    writer_lost: std::sync::atomic::AtomicBool,
    fields: Fields,
    /// Whether erasure jobs may be waiting that this process has not looked at (true at
    /// start: a crash may have left some).
    erasures_unchecked: std::sync::atomic::AtomicBool,
    /// Whether the index was created by this open (none was there, or one of an older
    /// format was replaced) and is still to be filled from the database.
    unfilled: std::sync::atomic::AtomicBool,
    /// Recent searches' matches, by index generation.
    matches: moka::sync::Cache<MatchKey, Arc<Matches>>,
    /// The keys of searches made once, whose matches were not kept.
    seen: moka::sync::Cache<MatchKey, ()>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex").finish_non_exhaustive()
    }
}

fn index_schema() -> (IndexSchema, Fields) {
    let mut b = IndexSchema::builder();
    let fields = Fields {
        key: b.add_text_field("key", STRING),
        scope: b.add_text_field("scope", STRING),
        id: b.add_text_field("id", STRING | STORED),
        // Indexed, never stored: the index holds terms, not values.
        text: b.add_text_field("text", TEXT),
        fp_hi: b.add_u64_field("fp_hi", FAST),
        fp_lo: b.add_u64_field("fp_lo", FAST),
    };
    (b.build(), fields)
}

fn scope_of(tenant: &str, collection: &str) -> String {
    format!("{tenant}\u{1f}{collection}")
}

fn key_of(tenant: &str, collection: &str, id: &str) -> String {
    format!("{tenant}\u{1f}{collection}\u{1f}{id}")
}

/// Whether any field of the collection is searchable.
#[must_use]
pub fn is_searchable(collection: &Collection) -> bool {
    collection.fields.values().any(|f| f.search)
}

/// The text indexed for a record: its searchable fields.
fn text_of(collection: &Collection, record: &Record) -> String {
    let mut parts = Vec::new();
    for f in collection.fields.values().filter(|f| f.search && f.ty == FieldType::String) {
        if let Some(FieldValue::String(s)) = record.values.get(&f.name) {
            parts.push(s.as_str());
        }
    }
    parts.join("\n")
}

impl SearchIndex {
    /// Opens (creating if needed) the index under `path`; `writable` takes the index's
    /// single-writer lock.
    ///
    /// # Errors
    /// The directory or index cannot be opened, or another process holds the writer lock.
    pub fn open(path: &Path, writable: bool) -> Result<Self, SearchError> {
        std::fs::create_dir_all(path).map_err(|e| SearchError::Directory(format!("{}: {e}", path.display())))?;
        let (schema, fields) = index_schema();
        let directory =
            || MmapDirectory::open(path).map_err(|e| SearchError::Directory(format!("{}: {e}", path.display())));
        let existed =
            Index::exists(&directory()?).map_err(|e| SearchError::Directory(format!("{}: {e}", path.display())))?;
        let (index, created) = match Index::open_or_create(directory()?, schema.clone()) {
            Ok(index) => (index, !existed),
            // An index an older release wrote (without the fingerprint fields): a writer
            // replaces it with an empty one, which the indexer fills from the database.
            Err(tantivy::TantivyError::SchemaError(_)) if writable => {
                // Only under the writer lock: a process still writing the old index keeps it.
                let dir = directory()?;
                let lock = dir.acquire_lock(&tantivy::directory::INDEX_WRITER_LOCK).map_err(|e| {
                    SearchError::Directory(format!(
                        "{} is in use by another process (a running server?): {e}",
                        path.display()
                    ))
                })?;
                Self::remove_index_files(path, &tantivy::directory::INDEX_WRITER_LOCK.filepath)?;
                drop(lock);
                (Index::create(dir, schema, tantivy::IndexSettings::default())?, true)
            }
            Err(tantivy::TantivyError::SchemaError(_)) => {
                return Err(SearchError::Directory(format!(
                    "{} holds a search index of an older format: the server rebuilds it at start, or `tombstone reindex` does",
                    path.display()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let writer = if writable {
            // The writer's indexing and merge threads are started from a thread in the idle
            // CPU class, so they inherit it: indexing takes spare cycles, not requests' ones.
            let starting = index.clone();
            let w: IndexWriter = std::thread::spawn(move || {
                tombstone_store::priority::lower_current_thread();
                starting.writer_with_num_threads(1, 20_000_000)
            })
            .join()
            .map_err(|_| SearchError::Directory("the index writer could not be started".into()))?
            .map_err(|e| match e {
                tantivy::TantivyError::LockFailure(..) => SearchError::Directory(format!(
                    "{} is in use by another process (a running server?)",
                    path.display()
                )),
                other => SearchError::Index(other),
            })?;
            Some(Mutex::new(w))
        } else {
            None
        };
        Ok(Self {
            index,
            reader,
            writer,
            writer_lost: std::sync::atomic::AtomicBool::new(false),
            fields,
            erasures_unchecked: std::sync::atomic::AtomicBool::new(true),
            unfilled: std::sync::atomic::AtomicBool::new(created && writable),
            matches: moka::sync::Cache::builder()
                .max_capacity(MATCH_CACHE_BYTES)
                .weigher(|key: &MatchKey, m: &Arc<Matches>| {
                    // 16 bytes a fingerprint, and room for the ids should a page read them.
                    u32::try_from(m.fingerprints.len() * 56 + key.2.len() + 128).unwrap_or(u32::MAX)
                })
                .time_to_idle(Duration::from_secs(60))
                .build(),
            seen: moka::sync::Cache::builder()
                .max_capacity(SEEN_CACHE_BYTES)
                .weigher(|key: &MatchKey, (): &()| u32::try_from(key.1.len() + key.2.len() + 64).unwrap_or(u32::MAX))
                .time_to_idle(Duration::from_secs(60))
                .build(),
        })
    }

    /// Removes the files of an index under `path` (the directory holds nothing else) but
    /// the lock file `keep`.
    fn remove_index_files(path: &Path, keep: &Path) -> Result<(), SearchError> {
        let failed = |e: std::io::Error| SearchError::Directory(format!("{}: {e}", path.display()));
        for entry in std::fs::read_dir(path).map_err(failed)? {
            let entry = entry.map_err(failed)?;
            if entry.file_type().map_err(failed)?.is_file() && entry.file_name() != keep.as_os_str() {
                std::fs::remove_file(entry.path()).map_err(failed)?;
            }
        }
        Ok(())
    }

    fn writer(&self) -> Result<std::sync::MutexGuard<'_, IndexWriter>, SearchError> {
        let w = self.writer.as_ref().ok_or(SearchError::ReadOnly)?;
        Ok(w.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The outbox seq the index has consumed up to (its last commit's payload).
    ///
    /// # Errors
    /// The index metadata cannot be read.
    pub fn position(&self) -> Result<i64, SearchError> {
        Ok(self.index.load_metas()?.payload.and_then(|p| p.parse().ok()).unwrap_or(0))
    }

    /// The candidates of `tenant`'s records in `collection` matching `q`, for a list page of
    /// `limit` (and its total, with `count`). Only candidates: the store intersects them
    /// with the list's filters, so nothing deleted is ever shown however far the index lags.
    ///
    /// Few matches are answered as ids (read from the stored documents), which the store
    /// looks up one by one; many as the fingerprints of their ids (read from fast fields),
    /// which the store tests while it walks the list in order — it stops once the page is
    /// full, so a page costs about `limit × records / matches` rows, not one lookup a match.
    ///
    /// # Errors
    /// The index cannot be searched, or is being rebuilt.
    pub fn candidates(
        &self,
        tenant: &str,
        collection: &str,
        q: &str,
        limit: u32,
        count: bool,
    ) -> Result<Candidates, SearchError> {
        if self.unfilled.load(std::sync::atomic::Ordering::Acquire) {
            return Err(SearchError::Rebuilding);
        }
        let searcher = self.reader.searcher();
        // The matches of one query on one state of the index do not change: the pages after
        // the first (and the same search again) take them from the cache until the index
        // commits again (a new generation: a new key).
        let key = (searcher.generation().generation_id(), scope_of(tenant, collection), q.to_string());
        let matches = match self.matches.get(&key) {
            Some(matches) => matches,
            None => {
                let matches = Arc::new(self.matches_of(&searcher, tenant, collection, q)?);
                // Kept from its second time on: a search seen once (most are) costs the cache
                // nothing but its key.
                if self.seen.contains_key(&key) {
                    self.matches.insert(key, matches.clone());
                } else {
                    self.seen.insert(key, ());
                }
                matches
            }
        };
        let n = matches.fingerprints.len();
        let records = matches.records;
        let walked = if count { records } else { (limit as usize + 1).saturating_mul(records) / n.max(1) };
        if n.saturating_mul(LOOKUP_COST_IN_ROWS) > walked {
            return Ok(Candidates::Fingerprints(matches.fingerprints.clone()));
        }
        if let Some(ids) = matches.ids.get() {
            return Ok(Candidates::Ids(ids.clone()));
        }
        let addresses = searcher.search(&*matches.query, &DocSetCollector)?;
        let mut ids = Vec::with_capacity(addresses.len());
        for address in addresses {
            let doc: TantivyDocument = searcher.doc(address)?;
            // The stored field is the key; the record id is its last part.
            if let Some(id) =
                doc.get_first(self.fields.id).and_then(|v| v.as_str()).and_then(|k| k.rsplit('\u{1f}').next())
            {
                ids.push(id.to_string());
            }
        }
        Ok(Candidates::Ids(matches.ids.get_or_init(|| ids).clone()))
    }

    /// The matches of `q` among `tenant`'s records in `collection`: their fingerprints.
    fn matches_of(&self, searcher: &Searcher, tenant: &str, collection: &str, q: &str) -> Result<Matches, SearchError> {
        let parser = QueryParser::for_index(&self.index, vec![self.fields.text]);
        let (user, _errors) = parser.parse_query_lenient(q);
        let scope = Term::from_field_text(self.fields.scope, &scope_of(tenant, collection));
        // The records a walk would pass (and some deleted documents not merged away yet).
        let in_scope = searcher.doc_freq(&scope)?;
        let everything: u64 = searcher.segment_readers().iter().map(|s| u64::from(s.max_doc())).sum();
        // When every document of the index is of this tenant's collection (one tenant, one
        // searchable collection), intersecting with the scope's postings would keep them all.
        let query: Box<dyn Query> = if in_scope == everything {
            user
        } else {
            Box::new(BooleanQuery::new(vec![
                (Occur::Must, Box::new(TermQuery::new(scope, IndexRecordOption::Basic)) as Box<dyn Query>),
                (Occur::Must, user),
            ]))
        };
        let found = searcher.search(&query, &FingerprintCollector { fields: self.fields })?;
        let records = usize::try_from(in_scope).unwrap_or(usize::MAX);
        Ok(Matches { fingerprints: Arc::new(Fingerprints::new(found, records)), records, ids: OnceLock::new(), query })
    }

    /// Whether any segment's term dictionary still holds `word` (lower-cased, as the
    /// tokenizer stores it) — also for documents deleted but not yet merged away.
    ///
    /// # Errors
    /// The index cannot be read.
    pub fn holds_term(&self, word: &str) -> Result<bool, SearchError> {
        self.reader.reload()?;
        let searcher = self.reader.searcher();
        let term = word.to_lowercase();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(self.fields.text)?;
            if inverted.terms().get(term.as_bytes()).map_err(|e| SearchError::Directory(e.to_string()))?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Every `(tenant, collection, id)` in the index.
    ///
    /// # Errors
    /// The index cannot be read.
    pub fn all_documents(&self) -> Result<HashSet<(String, String, String)>, SearchError> {
        self.reader.reload()?;
        let searcher = self.reader.searcher();
        let addresses = searcher.search(&AllQuery, &DocSetCollector)?;
        let mut out = HashSet::with_capacity(addresses.len());
        for address in addresses {
            let doc: TantivyDocument = searcher.doc(address)?;
            // The stored field is the key: tenant, collection and id.
            if let Some(stored) = doc.get_first(self.fields.id).and_then(|v| v.as_str()) {
                let mut parts = stored.splitn(3, '\u{1f}');
                if let (Some(t), Some(c), Some(i)) = (parts.next(), parts.next(), parts.next()) {
                    out.insert((t.to_string(), c.to_string(), i.to_string()));
                }
            }
        }
        Ok(out)
    }

    fn put(&self, writer: &mut IndexWriter, collection: &Collection, record: &Record) -> Result<(), SearchError> {
        self.unless_lost()?;
        let key = key_of(&record.tenant, &collection.name, &record.id);
        let fp = fingerprint(&record.id);
        writer.delete_term(Term::from_field_text(self.fields.key, &key));
        let added = writer.add_document(doc!(
            self.fields.key => key.clone(),
            self.fields.scope => scope_of(&record.tenant, &collection.name),
            self.fields.id => key,
            self.fields.text => text_of(collection, record),
            self.fields.fp_hi => (fp >> 64) as u64,
            self.fields.fp_lo => fp as u64,
        ));
        // An indexing thread that failed to write its segment (a full disk) kills the
        // writer: every later add fails until it is replaced.
        if let Err(e) = added {
            let e = SearchError::Index(e);
            self.roll_back(writer, &e);
            return Err(e);
        }
        Ok(())
    }

    fn remove(&self, writer: &IndexWriter, tenant: &str, collection: &str, id: &str) {
        writer.delete_term(Term::from_field_text(self.fields.key, &key_of(tenant, collection, id)));
    }

    fn commit(&self, writer: &mut IndexWriter, position: Option<i64>) -> Result<(), SearchError> {
        self.unless_lost()?;
        let result = (|| {
            let mut prepared = writer.prepare_commit()?;
            if let Some(p) = position {
                prepared.set_payload(&p.to_string());
            }
            prepared.commit()?;
            Ok(())
        })();
        if let Err(e) = result {
            self.roll_back(writer, &e);
            return Err(e);
        }
        self.reader.reload()?;
        Ok(())
    }

    /// Rewrites the segments that hold deleted documents and removes the old files, so the
    /// terms of removed documents are gone from disk (erasure); segments without deletions
    /// are left as they are.
    fn compact_deleted(&self, writer: &mut IndexWriter) -> Result<(), SearchError> {
        self.merge_now(writer, |index| {
            Ok(index.searchable_segment_metas()?.iter().filter(|m| m.has_deletes()).map(|m| m.id()).collect())
        })?;
        self.reader.reload()?;
        writer.garbage_collect_files().wait()?;
        Ok(())
    }

    /// Finishes the `search` step of the erasures whose `record.erased` event the index has
    /// consumed: their documents are out, and the segments that held them are rewritten.
    ///
    /// # Errors
    /// The store or the index failed; the steps stay pending then.
    pub async fn finish_erasures(&self, store: &dyn Store) -> Result<u64, SearchError> {
        let seqs = store.pending_erasure_searches().await?;
        let position = self.position()?;
        let Some(through) = seqs.iter().copied().filter(|s| *s <= position).max() else {
            return Ok(0);
        };
        self.compact_deleted(&mut *self.writer()?)?;
        Ok(store.finish_erasure_searches(through).await?)
    }

    /// Rewrites every segment without deleted documents and removes the old files, so the
    /// terms of removed documents are gone from disk (erasure).
    fn compact(&self, writer: &mut IndexWriter) -> Result<(), SearchError> {
        self.unless_lost()?;
        let result = (|| {
            self.merge_now(writer, Index::searchable_segment_ids)?;
            self.reader.reload()?;
            writer.garbage_collect_files().wait()?;
            Ok(())
        })();
        if let Err(e) = &result {
            self.roll_back(writer, e);
        }
        result
    }

    /// Merges the segments `pick` chooses into one, now. A merge the writer's merge policy
    /// started by itself after a commit may have taken some of them first; tantivy then
    /// refuses this one (`InvalidArgument`: "the segments that were merged could not be
    /// found"), which is no failure: wait a moment for that merge and choose again.
    /// (`tombstone reindex` of 300,000 records met it on every run.)
    fn merge_now(
        &self,
        writer: &mut IndexWriter,
        pick: impl Fn(&Index) -> tantivy::Result<Vec<tantivy::index::SegmentId>>,
    ) -> Result<(), SearchError> {
        const ATTEMPTS: u32 = 50;
        for attempt in 1.. {
            let segments = pick(&self.index)?;
            if segments.is_empty() {
                return Ok(());
            }
            match writer.merge(&segments).wait() {
                Ok(_) => return Ok(()),
                Err(tantivy::TantivyError::InvalidArgument(_)) if attempt < ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// After a failed commit or merge (a full disk, an I/O error) the writer cannot be
    /// trusted: tantivy's `prepare_commit` returns at the first indexing thread that failed
    /// without starting a new one, so the next commit would "succeed" without the documents
    /// added since and move the position past events never indexed. A rollback replaces
    /// the writer with a fresh one at the last commit; the next catch-up applies the
    /// events after that commit again (indexing is idempotent), so a full disk only delays
    /// the index, and it resumes by itself once space returns.
    fn roll_back(&self, writer: &mut IndexWriter, cause: &SearchError) {
        match writer.rollback() {
            Ok(_) => tracing::warn!(error = %cause, "search index write failed; rolled back to its last commit"),
            Err(e) => {
                // The old writer gave up its directory lock to the new one that could not
                // start: a second rollback would panic, so none is tried.
                self.writer_lost.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::error!(
                    error = %cause, rollback = %e,
                    "search index write failed and its writer could not be restarted; the index stays behind until the server restarts"
                );
            }
        }
    }

    fn unless_lost(&self) -> Result<(), SearchError> {
        if self.writer_lost.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SearchError::Directory("the index writer was lost after a failed rollback".into()));
        }
        Ok(())
    }

    /// Consumes the outbox from the index's position: indexes the current state of every
    /// changed record of a searchable collection. Returns how many events were consumed.
    ///
    /// # Errors
    /// The store or the index failed; the position is not moved then.
    pub async fn catch_up(&self, store: &dyn Store, schema: &Schema) -> Result<u64, SearchError> {
        if self.unfilled.load(std::sync::atomic::Ordering::Acquire) {
            // A new index starts from the database's current state, not from the outbox
            // (which may have been trimmed long ago).
            tracing::info!("the search index is new; filling it from the database");
            let n = self.rebuild(store, schema, &|_, _| {}).await?;
            tracing::info!(records = n, "search index filled");
            return Ok(n);
        }
        let mut consumed = 0;
        let mut after = self.position()?;
        // Events applied to the writer since its last commit: a commit (segment files, an
        // fsync, a reader reload) is made once caught up, or every COMMIT_EVERY events of a
        // long backlog — not once per read batch.
        let mut uncommitted = 0;
        loop {
            let changes = store.changes_since(after, BATCH).await?;
            let Some(last) = changes.last().map(|c| c.0) else {
                if uncommitted > 0 {
                    self.commit(&mut *self.writer()?, Some(after))?;
                }
                // Caught up: the erasures it passed (or a crash left) finish their search step.
                if self.erasures_unchecked.load(std::sync::atomic::Ordering::Relaxed) {
                    self.finish_erasures(store).await?;
                    self.erasures_unchecked.store(false, std::sync::atomic::Ordering::Relaxed);
                }
                return Ok(consumed);
            };
            let mut current: Vec<Current> = Vec::new();
            let mut erased = false;
            for (_, (tenant, collection, id), kind) in &changes {
                let Some(c) = schema.collection(collection).filter(|c| is_searchable(c)) else { continue };
                // A purge in a soft-delete collection comes after the record's deletion,
                // whose event (consumed before it, in outbox order) took the document
                // out: a purge pass costs the index nothing. A hard delete has no earlier
                // deletion event, so its purge takes the document out.
                if kind == "record.purged" && c.delete == DeleteMode::Soft {
                    continue;
                }
                erased |= kind == "record.erased";
                // An event that takes a record out needs no read: its document goes (a later
                // event of the same record in this batch puts it back if it returned). Only
                // events that bring a record in read its current state.
                let gone = matches!(kind.as_str(), "record.deleted" | "record.purged" | "record.erased");
                let record =
                    if gone { None } else { store.get_record(tenant, c, id).await?.filter(|r| !r.is_deleted()) };
                current.push((c.clone(), (tenant.clone(), collection.clone(), id.clone()), record));
            }
            {
                let mut writer = self.writer()?;
                for (c, (tenant, collection, id), record) in &current {
                    match record {
                        Some(r) => self.put(&mut writer, c, r)?,
                        None => self.remove(&writer, tenant, collection, id),
                    }
                }
                after = last;
                uncommitted += changes.len();
                // An erasure is committed at once: its document must leave the index; the
                // segments are rewritten once caught up (its job, see `finish_erasures`).
                if erased || uncommitted >= COMMIT_EVERY {
                    self.commit(&mut writer, Some(after))?;
                    uncommitted = 0;
                }
                if erased {
                    // No search of the erased values stays in memory either.
                    self.matches.invalidate_all();
                    self.seen.invalidate_all();
                    // Cleared only once the step is done, so a failure is retried.
                    self.erasures_unchecked.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            consumed += changes.len() as u64;
        }
    }

    /// Rebuilds the index from the database, reporting progress per collection.
    ///
    /// # Errors
    /// The store or the index failed.
    pub async fn rebuild(
        &self,
        store: &dyn Store,
        schema: &Schema,
        progress: &(dyn Fn(&str, u64) + Sync),
    ) -> Result<u64, SearchError> {
        let position = store.last_event_seq().await?;
        let mut records = Vec::new();
        for c in schema.collections.values().filter(|c| is_searchable(c)) {
            for (tenant, id) in store.active_ids(c).await? {
                if let Some(r) = store.get_record(&tenant, c, &id).await?.filter(|r| !r.is_deleted()) {
                    records.push((c.clone(), r));
                    progress(&c.name, 1);
                }
            }
        }
        let mut writer = self.writer()?;
        writer.delete_all_documents()?;
        let mut total = 0;
        for (c, r) in &records {
            self.put(&mut writer, c, r)?;
            total += 1;
        }
        self.commit(&mut writer, Some(position))?;
        self.compact(&mut writer)?;
        self.unfilled.store(false, std::sync::atomic::Ordering::Release);
        Ok(total)
    }
}

/// The matches of one search on one generation of the index.
struct Matches {
    fingerprints: Arc<Fingerprints>,
    /// The documents of the tenant's collection.
    records: usize,
    /// The matches' ids, once a page needed them.
    ids: OnceLock<Vec<String>>,
    query: Box<dyn Query>,
}

/// A search's key in the cache of matches: the index generation, the scope and `q`.
type MatchKey = (u64, String, String);

/// The cache of matches holds at most this many bytes (16 a match, plus the ids when read).
const MATCH_CACHE_BYTES: u64 = 64 << 20;

/// The keys of searches seen once take at most this many bytes.
const SEEN_CACHE_BYTES: u64 = 4 << 20;

/// Collects each matching document's id fingerprint, without scores.
struct FingerprintCollector {
    fields: Fields,
}

struct SegmentFingerprints {
    hi: Column<u64>,
    lo: Column<u64>,
    found: Vec<u128>,
}

impl Collector for FingerprintCollector {
    type Fruit = Vec<u128>;
    type Child = SegmentFingerprints;

    fn for_segment(&self, _: SegmentOrdinal, reader: &SegmentReader) -> tantivy::Result<SegmentFingerprints> {
        let schema = reader.schema();
        let column = |field| reader.fast_fields().u64(schema.get_field_name(field));
        Ok(SegmentFingerprints { hi: column(self.fields.fp_hi)?, lo: column(self.fields.fp_lo)?, found: Vec::new() })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn collect_segment(&self, weight: &dyn Weight, segment: u32, reader: &SegmentReader) -> tantivy::Result<Vec<u128>> {
        let mut child = self.for_segment(segment, reader)?;
        // Room for the matches at once (the scorer's estimate is an upper bound): 10,000
        // matches grown by doubling cost as much again in copies.
        child.found.reserve(weight.scorer(reader, 1.0)?.size_hint() as usize);
        match reader.alive_bitset() {
            None => weight.for_each_no_score(reader, &mut |docs| child.collect_block(docs))?,
            Some(alive) => weight.for_each_no_score(reader, &mut |docs| {
                let (mut kept, mut n) = ([0; COLLECT_BLOCK_BUFFER_LEN], 0);
                for &doc in docs.iter().filter(|d| alive.is_alive(**d)) {
                    kept[n] = doc;
                    n += 1;
                    if n == kept.len() {
                        child.collect_block(&kept);
                        n = 0;
                    }
                }
                child.collect_block(&kept[..n]);
            })?,
        }
        Ok(child.harvest())
    }

    fn merge_fruits(&self, mut fruits: Vec<Vec<u128>>) -> tantivy::Result<Vec<u128>> {
        if fruits.len() == 1 {
            return Ok(fruits.pop().unwrap_or_default());
        }
        Ok(fruits.concat())
    }
}

impl SegmentCollector for SegmentFingerprints {
    type Fruit = Vec<u128>;

    fn collect(&mut self, doc: DocId, _score: Score) {
        if let (Some(hi), Some(lo)) = (self.hi.first(doc), self.lo.first(doc)) {
            self.found.push((u128::from(hi) << 64) | u128::from(lo));
        }
    }

    fn collect_block(&mut self, docs: &[DocId]) {
        // Every document has both values (the columns are full): read them a block at a time.
        if let (ColumnIndex::Full, ColumnIndex::Full) = (&self.hi.index, &self.lo.index) {
            let (mut hi, mut lo) = ([0; COLLECT_BLOCK_BUFFER_LEN], [0; COLLECT_BLOCK_BUFFER_LEN]);
            for block in docs.chunks(COLLECT_BLOCK_BUFFER_LEN) {
                self.hi.values.get_vals(block, &mut hi[..block.len()]);
                self.lo.values.get_vals(block, &mut lo[..block.len()]);
                self.found
                    .extend(hi.iter().zip(&lo).take(block.len()).map(|(h, l)| (u128::from(*h) << 64) | u128::from(*l)));
            }
        } else {
            for &doc in docs {
                self.collect(doc, 0.0);
            }
        }
    }

    fn harvest(self) -> Self::Fruit {
        self.found
    }
}

/// A changed record's collection, key and current state (`None`: not active).
type Current = (Arc<Collection>, (String, String, String), Option<Record>);

/// What the reconciler found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Drift {
    /// Documents of records that are deleted, purged, erased or never existed.
    pub stale_documents: Vec<(String, String, String)>,
    /// Active records the index does not have.
    pub missing_documents: Vec<(String, String, String)>,
    /// Outbox events the indexer has not consumed yet.
    pub index_lag: i64,
    /// Webhook deliveries still pending.
    pub webhook_backlog: u64,
}

impl Drift {
    /// Documents that disagree with the database.
    #[must_use]
    pub fn search_drift(&self) -> u64 {
        (self.stale_documents.len() + self.missing_documents.len()) as u64
    }
}

/// Compares the database with the index (and reports consumers that fell behind); with
/// `repair`, removes stale documents and indexes missing ones from the database's current
/// state — never from old copies, so erased values cannot come back.
///
/// # Errors
/// The store or the index failed.
pub async fn reconcile(
    index: &SearchIndex,
    store: &dyn Store,
    schema: &Schema,
    repair: bool,
) -> Result<Drift, SearchError> {
    // Consume what is pending first, so lag is not counted as drift.
    if repair {
        index.catch_up(store, schema).await?;
    }
    let documents = index.all_documents()?;
    let mut active = HashSet::new();
    for c in schema.collections.values().filter(|c| is_searchable(c)) {
        for (tenant, id) in store.active_ids(c).await? {
            active.insert((tenant, c.name.clone(), id));
        }
    }
    let mut drift = Drift {
        stale_documents: documents.difference(&active).cloned().collect(),
        missing_documents: active.difference(&documents).cloned().collect(),
        index_lag: store.last_event_seq().await? - index.position()?,
        webhook_backlog: store.webhook_backlog().await?,
    };
    drift.stale_documents.sort();
    drift.missing_documents.sort();
    #[expect(clippy::cast_precision_loss, reason = "a gauge")]
    metrics::gauge!("tombstone_search_drift").set(drift.search_drift() as f64);
    if repair && drift.search_drift() > 0 {
        // Stale documents go without a look at the record (the database already said it is
        // not active); missing ones are indexed from the record's current state.
        let mut missing: BTreeMap<(String, String, String), Record> = BTreeMap::new();
        for key in &drift.missing_documents {
            if let Some(c) = schema.collection(&key.1)
                && let Some(r) = store.get_record(&key.0, c, &key.2).await?.filter(|r| !r.is_deleted())
            {
                missing.insert(key.clone(), r);
            }
        }
        let mut writer = index.writer()?;
        for (tenant, collection, id) in &drift.stale_documents {
            index.remove(&writer, tenant, collection, id);
        }
        for ((_, collection, _), record) in &missing {
            if let Some(c) = schema.collection(collection) {
                index.put(&mut writer, c, record)?;
            }
        }
        let position = index.position()?;
        index.commit(&mut writer, Some(position))?;
        index.compact(&mut writer)?;
        metrics::gauge!("tombstone_search_drift").set(0.0);
    }
    Ok(drift)
}

/// Runs the indexer (after every commit that wrote events, and every `poll` for other
/// processes' changes) and the reconciler (every `reconcile_every`) until cancelled. The
/// store's notification works across runtimes: the indexer has one of its own.
pub async fn run(
    index: Arc<SearchIndex>,
    store: Arc<dyn Store>,
    schema: Arc<Schema>,
    reconcile_every: Duration,
    poll: Duration,
    mut cancel: tokio::sync::watch::Receiver<bool>,
) {
    let changes = store.changes();
    let mut reconcile_tick = tokio::time::interval_at(tokio::time::Instant::now() + reconcile_every, reconcile_every);
    loop {
        let notified = changes.notified();
        if let Err(e) = index.catch_up(store.as_ref(), &schema).await {
            tracing::warn!(error = %e, "search indexer could not catch up; retrying");
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(poll) => {}
            _ = reconcile_tick.tick() => {
                match reconcile(&index, store.as_ref(), &schema, true).await {
                    Ok(d) if d.search_drift() > 0 => tracing::warn!(
                        stale = d.stale_documents.len(), missing = d.missing_documents.len(), "search drift repaired"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "reconciler pass failed"),
                }
            }
            _ = cancel.changed() => break,
        }
    }
}
