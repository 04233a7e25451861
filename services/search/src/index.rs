//! [`MessageIndex`]: the tantivy index of messages, and the only code that
//! touches tantivy. Every method blocks (tantivy does file and CPU work), so
//! callers run them on the blocking pool, never on the reactor.
//!
//! Documents are keyed by message id: an upsert deletes the id's term and
//! adds the new document, so applying the same change twice leaves one
//! document. The position in the api's change log that the index reflects
//! is stored in the payload of each tantivy commit, so the documents and
//! the position are durable together and a restart resumes exactly there.
//!
//! Ids are the typed ids of `filament_ids`, stored as their canonical
//! text. Read back from a stored document they are parsed canonically too:
//! only this module writes them, always canonically, so a stored id that
//! does not parse is a broken document and is skipped, not answered.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use filament_ids::{ChannelId, GuildId, MessageId};
use tantivy::collector::sort_key::{SortBySimilarityScore, SortByString};
use tantivy::collector::{Count, DocSetCollector, TopDocs};
use tantivy::query::{
    BooleanQuery, ConstScoreQuery, EmptyQuery, FuzzyTermQuery, Occur, PhraseQuery, Query,
    RegexQuery, TermQuery,
};
use tantivy::schema::{
    FAST, Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::tokenizer::{LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer};
use tantivy::{Index, IndexReader, IndexWriter, Order, ReloadPolicy, TantivyDocument, Term};

use crate::query::{Clause, Matcher, ParsedQuery, QueryError, wildcard_regex};

/// The tokenizer of message content, on both the indexing and the query
/// side: split on anything that is not a letter or digit, drop tokens over
/// 40 bytes, lowercase.
const ANALYZER: &str = "filament_message";
/// Longest token kept, in bytes.
const MAX_TOKEN_BYTES: usize = 40;

/// Where an index lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexLocation {
    /// In memory: gone at restart, rebuilt from the log from position 0.
    Ram,
    /// A directory, created if missing; survives restarts.
    Dir(PathBuf),
}

#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// tantivy's indexing memory budget, split between the threads.
    pub memory_bytes: usize,
    pub threads: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 64 * 1024 * 1024,
            threads: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index error: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("index directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("the index at {0} has another schema; remove the directory to rebuild it")]
    SchemaMismatch(PathBuf),
    #[error("the index commit payload {0:?} is not a log position")]
    BadPayload(String),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("more than {0} documents")]
    TooManyDocs(usize),
    #[error("the index writer is closed")]
    Closed,
}

/// A message as the index stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedDoc {
    pub message_id: MessageId,
    pub guild_id: GuildId,
    pub channel_id: ChannelId,
    pub content: String,
}

/// One change to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocChange {
    Upsert(IndexedDoc),
    Delete(MessageId),
}

/// A search, validated.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub guild_id: GuildId,
    pub query: ParsedQuery,
    pub limit: usize,
    pub channel_id: Option<ChannelId>,
    pub exclude_channel_ids: Vec<ChannelId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub message_id: MessageId,
    pub channel_id: ChannelId,
}

#[derive(Clone, Copy)]
struct Fields {
    message_id: Field,
    guild_id: Field,
    channel_id: Field,
    content: Field,
    /// Of the content, so reconcile can tell a stale document.
    content_hash: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let content_options = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        // Also a fast field: ids sort by time, so equally relevant hits are
        // ranked newest first by it.
        message_id: builder.add_text_field("message_id", STRING | STORED | FAST),
        guild_id: builder.add_text_field("guild_id", STRING),
        channel_id: builder.add_text_field("channel_id", STRING | STORED),
        content: builder.add_text_field("content", content_options),
        content_hash: builder.add_u64_field("content_hash", STORED),
    };
    (builder.build(), fields)
}

fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
        .filter(LowerCaser)
        .build()
}

/// The index with its one writer and its reader. Cheap to clone.
#[derive(Clone)]
pub struct MessageIndex {
    inner: Arc<Inner>,
}

struct Inner {
    index: Index,
    reader: IndexReader,
    /// `None` once closed: the directory lock is released with it.
    writer: Mutex<Option<IndexWriter>>,
    fields: Fields,
}

impl MessageIndex {
    /// Opens the index at `location`, creating it if missing.
    pub fn open(location: &IndexLocation, writer: WriterConfig) -> Result<Self, IndexError> {
        let (schema, fields) = schema();
        let index = match location {
            IndexLocation::Ram => Index::create_in_ram(schema.clone()),
            IndexLocation::Dir(dir) => {
                std::fs::create_dir_all(dir)?;
                if dir.join("meta.json").exists() {
                    let index = Index::open_in_dir(dir)?;
                    if index.schema() != schema {
                        return Err(IndexError::SchemaMismatch(dir.clone()));
                    }
                    index
                } else {
                    Index::create_in_dir(dir, schema.clone())?
                }
            }
        };
        index.tokenizers().register(ANALYZER, analyzer());
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let writer = index.writer_with_num_threads(writer.threads.max(1), writer.memory_bytes)?;
        Ok(Self {
            inner: Arc::new(Inner {
                index,
                reader,
                writer: Mutex::new(Some(writer)),
                fields,
            }),
        })
    }

    /// The log position of the last commit; 0 for a new index.
    pub fn committed_seq(&self) -> Result<u64, IndexError> {
        let metas = self.inner.index.load_metas()?;
        match metas.payload {
            None => Ok(0),
            Some(payload) => payload
                .parse()
                .map_err(|_| IndexError::BadPayload(payload.clone())),
        }
    }

    /// Queues changes in the writer; they become searchable at the next
    /// [`commit`](Self::commit).
    pub fn apply(&self, changes: &[DocChange]) -> Result<(), IndexError> {
        let guard = self.writer();
        let writer = guard.as_ref().ok_or(IndexError::Closed)?;
        let fields = self.inner.fields;
        for change in changes {
            match change {
                DocChange::Upsert(doc) => {
                    writer.delete_term(id_term(fields.message_id, doc.message_id));
                    writer.add_document(document(fields, doc))?;
                }
                DocChange::Delete(message_id) => {
                    writer.delete_term(id_term(fields.message_id, *message_id));
                }
            }
        }
        Ok(())
    }

    /// Queues the removal of every document of a guild.
    pub fn delete_guild(&self, guild_id: GuildId) -> Result<(), IndexError> {
        let guard = self.writer();
        let writer = guard.as_ref().ok_or(IndexError::Closed)?;
        writer.delete_term(id_term(self.inner.fields.guild_id, guild_id));
        Ok(())
    }

    /// Queues the removal of every document.
    pub fn delete_all(&self) -> Result<(), IndexError> {
        let guard = self.writer();
        guard
            .as_ref()
            .ok_or(IndexError::Closed)?
            .delete_all_documents()?;
        Ok(())
    }

    /// Drops everything queued since the last commit.
    pub fn rollback(&self) -> Result<(), IndexError> {
        let mut guard = self.writer();
        guard.as_mut().ok_or(IndexError::Closed)?.rollback()?;
        Ok(())
    }

    /// Makes everything queued durable and searchable, recording `seq` as
    /// the log position the index now reflects.
    pub fn commit(&self, seq: u64) -> Result<(), IndexError> {
        {
            let mut guard = self.writer();
            let writer = guard.as_mut().ok_or(IndexError::Closed)?;
            let mut prepared = writer.prepare_commit()?;
            prepared.set_payload(&seq.to_string());
            prepared.commit()?;
        }
        self.inner.reader.reload()?;
        Ok(())
    }

    /// Stops writing: waits for background merges and releases the
    /// directory's lock, so another process (or a restart in this one) can
    /// open it. Uncommitted changes are dropped; searches keep working.
    pub fn close_writer(&self) -> Result<(), IndexError> {
        let writer = self.writer().take();
        if let Some(writer) = writer {
            writer.wait_merging_threads()?;
        }
        Ok(())
    }

    /// Documents searchable now.
    pub fn num_docs(&self) -> u64 {
        self.inner.reader.searcher().num_docs()
    }

    /// The best hits, most relevant first, then newest first.
    pub fn search(&self, request: &SearchRequest) -> Result<Vec<Hit>, IndexError> {
        let query = self.build_query(request)?;
        let searcher = self.inner.reader.searcher();
        let collector = TopDocs::with_limit(request.limit.max(1)).order_by((
            (SortBySimilarityScore, Order::Desc),
            (SortByString::for_field("message_id"), Order::Desc),
        ));
        let top = searcher.search(&query, &collector)?;
        let fields = self.inner.fields;
        let mut hits = Vec::with_capacity(top.len());
        for (_, address) in top {
            let doc: TantivyDocument = searcher.doc(address)?;
            if let (Some(message_id), Some(channel_id)) = (
                stored_id(&doc, fields.message_id),
                stored_id(&doc, fields.channel_id),
            ) {
                hits.push(Hit {
                    message_id,
                    channel_id,
                });
            }
        }
        Ok(hits)
    }

    /// Every document of a guild as (message id → content hash), or
    /// `TooManyDocs` past `max`.
    pub fn guild_docs(
        &self,
        guild_id: GuildId,
        max: usize,
    ) -> Result<HashMap<MessageId, u64>, IndexError> {
        let fields = self.inner.fields;
        let searcher = self.inner.reader.searcher();
        let query = TermQuery::new(id_term(fields.guild_id, guild_id), IndexRecordOption::Basic);
        if searcher.search(&query, &Count)? > max {
            return Err(IndexError::TooManyDocs(max));
        }
        let mut docs = HashMap::new();
        for address in searcher.search(&query, &DocSetCollector)? {
            let doc: TantivyDocument = searcher.doc(address)?;
            let hash = doc
                .get_first(fields.content_hash)
                .and_then(|value| value.as_u64());
            if let (Some(message_id), Some(hash)) = (stored_id(&doc, fields.message_id), hash) {
                docs.insert(message_id, hash);
            }
        }
        Ok(docs)
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Option<IndexWriter>> {
        // A panic while holding the writer leaves tantivy's own state
        // consistent (uncommitted work is discarded at the next commit
        // failure), so the lock stays usable.
        self.inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn build_query(&self, request: &SearchRequest) -> Result<Box<dyn Query>, IndexError> {
        let fields = self.inner.fields;
        let filter = |term: Term| -> Box<dyn Query> {
            Box::new(ConstScoreQuery::new(
                Box::new(TermQuery::new(term, IndexRecordOption::Basic)),
                0.0,
            ))
        };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(
            Occur::Must,
            filter(id_term(fields.guild_id, request.guild_id)),
        )];
        if let Some(channel_id) = request.channel_id {
            clauses.push((Occur::Must, filter(id_term(fields.channel_id, channel_id))));
        }
        for channel_id in &request.exclude_channel_ids {
            clauses.push((
                Occur::MustNot,
                filter(id_term(fields.channel_id, channel_id)),
            ));
        }
        let mut analyzer = analyzer();
        let mut positive = 0;
        for clause in &request.query.clauses {
            let Some(query) = self.clause_query(&mut analyzer, clause)? else {
                continue;
            };
            if clause.excluded {
                clauses.push((Occur::MustNot, query));
            } else {
                positive += 1;
                clauses.push((Occur::Must, query));
            }
        }
        if positive == 0 {
            return Err(
                QueryError::Malformed("the query has no letters or digits to search for").into(),
            );
        }
        Ok(Box::new(BooleanQuery::new(clauses)))
    }

    /// The tantivy query of one clause; `None` for text with no words.
    fn clause_query(
        &self,
        analyzer: &mut TextAnalyzer,
        clause: &Clause,
    ) -> Result<Option<Box<dyn Query>>, IndexError> {
        let content = self.inner.fields.content;
        Ok(match &clause.matcher {
            Matcher::Text(text) => {
                let mut terms = Vec::new();
                let mut stream = analyzer.token_stream(text);
                while let Some(token) = stream.next() {
                    terms.push(Term::from_field_text(content, &token.text));
                }
                match terms.len() {
                    // Words only over the token length: they were never
                    // indexed, so nothing can match them.
                    0 if text.chars().any(char::is_alphanumeric) => Some(Box::new(EmptyQuery)),
                    0 => None,
                    1 => Some(Box::new(TermQuery::new(
                        terms.remove(0),
                        IndexRecordOption::WithFreqs,
                    ))),
                    _ => Some(Box::new(PhraseQuery::new(terms))),
                }
            }
            Matcher::Wildcard(pattern) => Some(Box::new(RegexQuery::from_pattern(
                &wildcard_regex(pattern),
                content,
            )?)),
            Matcher::Fuzzy { word, distance } => Some(Box::new(FuzzyTermQuery::new(
                Term::from_field_text(content, word),
                *distance,
                true,
            ))),
        })
    }
}

/// The term of an id field: the id's canonical text.
fn id_term(field: Field, id: impl std::fmt::Display) -> Term {
    Term::from_field_text(field, &id.to_string())
}

fn document(fields: Fields, doc: &IndexedDoc) -> TantivyDocument {
    let mut document = TantivyDocument::default();
    document.add_text(fields.message_id, doc.message_id.to_string());
    document.add_text(fields.guild_id, doc.guild_id.to_string());
    document.add_text(fields.channel_id, doc.channel_id.to_string());
    document.add_text(fields.content, &doc.content);
    document.add_u64(fields.content_hash, content_hash(&doc.content));
    document
}

/// A stored id, parsed canonically (see the module docs); `None` if the
/// field is missing or not a canonical id.
fn stored_id<T: std::str::FromStr>(doc: &TantivyDocument, field: Field) -> Option<T> {
    doc.get_first(field)
        .and_then(|value| value.as_str())
        .and_then(|text| text.parse().ok())
}

/// FNV-1a: stable across builds and processes, unlike the std hasher, so
/// hashes written by one version can be compared by the next.
pub fn content_hash(content: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    content.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use ulid::Ulid;

    use super::*;

    fn doc(guild_id: GuildId, channel_id: ChannelId, content: &str) -> IndexedDoc {
        IndexedDoc {
            message_id: MessageId::generate(),
            guild_id,
            channel_id,
            content: content.to_owned(),
        }
    }

    fn ram() -> MessageIndex {
        MessageIndex::open(&IndexLocation::Ram, WriterConfig::default()).expect("index")
    }

    fn search(index: &MessageIndex, guild_id: GuildId, text: &str) -> Vec<MessageId> {
        search_in(index, guild_id, text, None, &[])
    }

    fn search_in(
        index: &MessageIndex,
        guild_id: GuildId,
        text: &str,
        channel_id: Option<ChannelId>,
        excluded: &[ChannelId],
    ) -> Vec<MessageId> {
        let request = SearchRequest {
            guild_id,
            query: crate::query::parse(text).expect("query"),
            limit: 50,
            channel_id,
            exclude_channel_ids: excluded.to_vec(),
        };
        index
            .search(&request)
            .expect("search")
            .into_iter()
            .map(|hit| hit.message_id)
            .collect()
    }

    #[test]
    fn upserts_are_idempotent_and_replace_text_and_deletes_remove() {
        let index = ram();
        let (guild, channel) = (GuildId::generate(), ChannelId::generate());
        let mut message = doc(guild, channel, "the quick brown fox");
        // The same upsert twice (a replay) leaves one document.
        index
            .apply(&[
                DocChange::Upsert(message.clone()),
                DocChange::Upsert(message.clone()),
            ])
            .expect("apply");
        index.commit(2).expect("commit");
        assert_eq!(index.num_docs(), 1);
        assert_eq!(search(&index, guild, "fox"), [message.message_id]);

        message.content = "a lazy dog".to_owned();
        index
            .apply(&[DocChange::Upsert(message.clone())])
            .expect("apply");
        index.commit(3).expect("commit");
        assert_eq!(index.num_docs(), 1);
        assert!(search(&index, guild, "fox").is_empty());
        assert_eq!(search(&index, guild, "lazy"), [message.message_id]);

        index
            .apply(&[DocChange::Delete(message.message_id)])
            .expect("apply");
        index.commit(4).expect("commit");
        assert_eq!(index.num_docs(), 0);
        assert!(search(&index, guild, "lazy").is_empty());
        assert_eq!(index.committed_seq().expect("seq"), 4);
    }

    #[test]
    fn a_directory_index_reopens_at_its_committed_position() {
        let dir = std::env::temp_dir().join(format!("filament-search-{}", Ulid::generate()));
        let location = IndexLocation::Dir(dir.clone());
        let (guild, channel) = (GuildId::generate(), ChannelId::generate());
        let kept = doc(guild, channel, "durable words");
        {
            let index = MessageIndex::open(&location, WriterConfig::default()).expect("index");
            assert_eq!(index.committed_seq().expect("seq"), 0);
            index
                .apply(&[DocChange::Upsert(kept.clone())])
                .expect("apply");
            index.commit(7).expect("commit");
            // Applied but never committed: lost with the process, and
            // replayed from position 7 by the next one.
            index
                .apply(&[DocChange::Upsert(doc(guild, channel, "volatile words"))])
                .expect("apply");
        }
        let index = MessageIndex::open(&location, WriterConfig::default()).expect("reopen");
        assert_eq!(index.committed_seq().expect("seq"), 7);
        assert_eq!(search(&index, guild, "words"), [kept.message_id]);
        drop(index);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn queries_match_words_phrases_wildcards_fuzzy_and_exclusions() {
        let index = ram();
        let (guild, channel) = (GuildId::generate(), ChannelId::generate());
        let docs = [
            doc(guild, channel, "Deploying the release tonight"),
            doc(guild, channel, "the release was deployed"),
            doc(guild, channel, "kitten pictures"),
            doc(guild, channel, "release notes: grey theme"),
        ];
        let changes: Vec<_> = docs.iter().cloned().map(DocChange::Upsert).collect();
        index.apply(&changes).expect("apply");
        index.commit(4).expect("commit");
        let id = |n: usize| docs[n].message_id;
        let sorted = |mut ids: Vec<MessageId>| {
            ids.sort();
            ids
        };

        // All words must match, case-insensitively.
        assert_eq!(search(&index, guild, "RELEASE tonight"), [id(0)]);
        assert_eq!(
            sorted(search(&index, guild, "release")),
            sorted(vec![id(0), id(1), id(3)])
        );
        assert_eq!(search(&index, guild, r#""was deployed""#), [id(1)]);
        assert!(search(&index, guild, r#""deployed was""#).is_empty());
        assert_eq!(
            sorted(search(&index, guild, "deploy*")),
            sorted(vec![id(0), id(1)])
        );
        assert_eq!(search(&index, guild, "gr?y"), [id(3)]);
        assert_eq!(search(&index, guild, "kiten~"), [id(2)]);
        assert!(search(&index, guild, "kiten").is_empty());
        assert_eq!(
            sorted(search(&index, guild, "release -tonight")),
            sorted(vec![id(1), id(3)])
        );
        // A word over the token length was never indexed: no hits.
        assert!(search(&index, guild, &"k".repeat(60)).is_empty());
        // Text with no letters or digits is refused, not matched to all.
        let request = SearchRequest {
            guild_id: guild,
            query: crate::query::parse("!!!").expect("caps pass"),
            limit: 10,
            channel_id: None,
            exclude_channel_ids: Vec::new(),
        };
        assert!(matches!(index.search(&request), Err(IndexError::Query(_))));
    }

    #[test]
    fn guild_channel_and_exclusion_filters_hold() {
        let index = ram();
        let (guild, other_guild) = (GuildId::generate(), GuildId::generate());
        let (general, secret) = (ChannelId::generate(), ChannelId::generate());
        let open = doc(guild, general, "launch codes");
        let hidden = doc(guild, secret, "launch codes");
        let foreign = doc(other_guild, ChannelId::generate(), "launch codes");
        let changes: Vec<_> = [&open, &hidden, &foreign]
            .into_iter()
            .cloned()
            .map(DocChange::Upsert)
            .collect();
        index.apply(&changes).expect("apply");
        index.commit(3).expect("commit");

        let all = search(&index, guild, "launch");
        assert_eq!(all.len(), 2);
        assert!(!all.contains(&foreign.message_id));
        assert_eq!(
            search_in(&index, guild, "launch", Some(general), &[]),
            [open.message_id]
        );
        assert_eq!(
            search_in(&index, guild, "launch", None, &[secret]),
            [open.message_id]
        );
    }

    #[test]
    fn equally_relevant_hits_come_newest_first() {
        let index = ram();
        let (guild, channel) = (GuildId::generate(), ChannelId::generate());
        let mut generator = ulid::Generator::new();
        let docs: Vec<_> = (0..5)
            .map(|_| IndexedDoc {
                message_id: generator.generate().map(MessageId::from).expect("id"),
                guild_id: guild,
                channel_id: channel,
                content: "same words".to_owned(),
            })
            .collect();
        // Indexed out of order, over two segments.
        index
            .apply(&[
                DocChange::Upsert(docs[3].clone()),
                DocChange::Upsert(docs[0].clone()),
            ])
            .expect("apply");
        index.commit(2).expect("commit");
        let rest: Vec<_> = [4, 1, 2]
            .into_iter()
            .map(|n| DocChange::Upsert(docs[n].clone()))
            .collect();
        index.apply(&rest).expect("apply");
        index.commit(5).expect("commit");
        let expected: Vec<_> = docs.iter().rev().map(|d| d.message_id).collect();
        assert_eq!(search(&index, guild, "same"), expected);
    }

    #[test]
    fn guild_docs_lists_hashes_and_refuses_past_the_cap() {
        let index = ram();
        let (guild, channel) = (GuildId::generate(), ChannelId::generate());
        let docs: Vec<_> = (0..3)
            .map(|n| doc(guild, channel, &format!("m{n}")))
            .collect();
        let changes: Vec<_> = docs.iter().cloned().map(DocChange::Upsert).collect();
        index.apply(&changes).expect("apply");
        index.commit(3).expect("commit");
        let listed = index.guild_docs(guild, 3).expect("docs");
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[&docs[1].message_id], content_hash("m1"));
        assert!(matches!(
            index.guild_docs(guild, 2),
            Err(IndexError::TooManyDocs(2))
        ));
    }

    #[test]
    fn deleting_a_guild_keeps_the_others() {
        let index = ram();
        let (guild, other) = (GuildId::generate(), GuildId::generate());
        let gone = doc(guild, ChannelId::generate(), "words");
        let kept = doc(other, ChannelId::generate(), "words");
        index
            .apply(&[DocChange::Upsert(gone), DocChange::Upsert(kept.clone())])
            .expect("apply");
        index.delete_guild(guild).expect("delete");
        index.commit(2).expect("commit");
        assert!(search(&index, guild, "words").is_empty());
        assert_eq!(search(&index, other, "words"), [kept.message_id]);
    }
}
