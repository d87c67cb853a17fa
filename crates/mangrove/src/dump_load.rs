//! `mangrove restore --dump DIR`: loads a mongodump directory into a running server, as
//! mongorestore 100.x does; also the client connection both commands share ([`connect`]).
//!
//! Per collection, in file-name order with views last: drop it (`--drop`), create it with the
//! options its metadata records (validator, collation, capped, timeseries, clusteredIndex, a
//! view's viewOn and pipeline…) unless it exists, insert its documents in ordered batches of
//! at most `--batch-size` documents and 16 MiB, then build its indexes (data first, as
//! mongorestore does, so each index is built once).
//!
//! Invariants: a `.bson` file is read one document at a time; a document refused for a
//! duplicate key or by the validator counts as a failure and the load goes on (mongorestore's
//! default without `--stopOnError`), any other error stops it; every document counted as
//! restored was acknowledged by the server, and a damaged file stops at the damaged document
//! after the ones before it are inserted, naming the file and the byte offset.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bson::{Bson, Document, RawDocumentBuf, doc};
use mongodb::error::{ErrorKind, InsertManyError};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection, Database};

use crate::dump_format::{BsonReader, PARTIAL, open_read, parse_json, unescape_name};

/// Bytes of documents in one insert: the server's largest message body.
const BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Server error codes mongorestore continues through: DuplicateKey, DocumentValidationFailure.
const IGNORABLE: [i32; 2] = [11000, 121];

/// What `mangrove restore --dump` was asked to do (its command line, `dump_cmd::RestoreArgs`).
pub struct LoadOptions {
    pub uri: String,
    pub drop: bool,
    pub db: Option<String>,
    pub collection: Option<String>,
    pub no_index_restore: bool,
    pub batch_size: usize,
}

/// A client for `uri`, checked with a ping so a wrong address fails here, in 10 s unless the
/// URI sets serverSelectionTimeoutMS.
pub async fn connect(uri: &str, app: &str) -> Result<Client, String> {
    let mut options = ClientOptions::parse(uri)
        .await
        .map_err(|e| format!("--uri is not a usable connection string: {}", drv(&e)))?;
    options
        .server_selection_timeout
        .get_or_insert(Duration::from_secs(10));
    options.app_name.get_or_insert_with(|| app.to_string());
    let client =
        Client::with_options(options).map_err(|e| format!("cannot connect: {}", drv(&e)))?;
    client
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .map_err(|e| format!("cannot reach the server at --uri: {}", drv(&e)))?;
    Ok(client)
}

/// A driver error as the server or the driver put it: its kind's message, without the raw
/// server reply the driver's own `Display` appends.
pub fn drv(e: &mongodb::error::Error) -> String {
    e.kind.to_string()
}

/// One collection's files in the dump.
struct Intent {
    db: String,
    coll: String,
    bson: Option<PathBuf>,
    metadata: Option<Document>,
}

impl Intent {
    fn kind(&self) -> &str {
        self.metadata
            .as_ref()
            .and_then(|m| m.get_str("type").ok())
            .unwrap_or("collection")
    }
}

/// Documents restored and refused so far, and the first refusal's message.
#[derive(Default)]
struct Tally {
    restored: u64,
    failed: u64,
    first_error: Option<String>,
}

/// Loads the dump at `dir`; `Ok(false)` when a collection failed part way (reported).
pub async fn restore(args: &LoadOptions, dir: &Path) -> Result<bool, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let intents = scan(dir, args)?;
    if intents.is_empty() {
        return Err(format!(
            "{} holds no .bson or .metadata.json files to restore (with the --db/--collection given)",
            dir.display()
        ));
    }
    let client = connect(&args.uri, "mangrove restore").await?;
    let (mut restored, mut failed, mut ok) = (0, 0, true);
    for intent in &intents {
        let ns = format!("{}.{}", intent.db, intent.coll);
        let mut tally = Tally::default();
        let result = restore_one(&client, intent, args, &mut tally).await;
        println!(
            "finished restoring {ns} ({} documents, {} failures)",
            tally.restored, tally.failed
        );
        restored += tally.restored;
        failed += tally.failed;
        if let Err(e) = result {
            eprintln!("mangrove restore: {ns}: {e}");
            ok = false;
            break;
        }
    }
    println!(
        "{restored} document(s) restored successfully. {failed} document(s) failed to restore."
    );
    Ok(ok)
}

/// The collections to restore: `DIR/<db>/…`, or `DIR` itself holding one database's files when
/// `--db` is given and `DIR/<db>` does not exist (mongorestore's `--db X dump/X`).
fn scan(dir: &Path, args: &LoadOptions) -> Result<Vec<Intent>, String> {
    let mut dbs: Vec<(String, PathBuf)> = Vec::new();
    match &args.db {
        Some(db) if !dir.join(db).is_dir() => dbs.push((db.clone(), dir.to_path_buf())),
        _ => {
            for entry in sorted_entries(dir)? {
                let name = entry
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_string);
                let wanted =
                    |n: &String| entry.is_dir() && args.db.as_ref().is_none_or(|db| db == n);
                if let Some(name) = name.filter(wanted) {
                    dbs.push((name, entry));
                }
            }
        }
    }
    let mut intents = Vec::new();
    for (db, path) in dbs {
        intents.extend(scan_db(&db, &path, args)?);
    }
    // Views last: the collections they read exist by then.
    intents.sort_by_key(|i| i.kind() == "view");
    Ok(intents)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let read = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = read.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    Ok(paths)
}

/// One database directory's collections, by the names in their metadata (or file names).
fn scan_db(db: &str, dir: &Path, args: &LoadOptions) -> Result<Vec<Intent>, String> {
    let mut by_stem: std::collections::BTreeMap<String, (Option<PathBuf>, Option<PathBuf>)> =
        Default::default();
    for path in sorted_entries(dir)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(PARTIAL) || !path.is_file() {
            continue;
        }
        let name = name.strip_suffix(".gz").unwrap_or(name);
        if let Some(stem) = name.strip_suffix(".metadata.json") {
            by_stem.entry(stem.to_string()).or_default().1 = Some(path.clone());
        } else if let Some(stem) = name.strip_suffix(".bson") {
            by_stem.entry(stem.to_string()).or_default().0 = Some(path.clone());
        }
    }
    let mut out = Vec::new();
    for (stem, (bson, meta_path)) in by_stem {
        let metadata = meta_path.as_deref().map(read_metadata).transpose()?;
        let coll = metadata
            .as_ref()
            .and_then(|m| m.get_str("collectionName").ok())
            .map(str::to_string)
            .unwrap_or_else(|| unescape_name(&stem));
        if coll.starts_with("system.buckets.") {
            return Err(format!(
                "{db}.{coll}: time-series buckets as mongod dumps them cannot be loaded: Mangrove stores measurements, not buckets. Dump the collection with `mangrove dump`, or export its measurements with mongoexport and import them"
            ));
        }
        if args.collection.as_ref().is_some_and(|c| *c != coll) {
            continue;
        }
        let db = db.to_string();
        out.push(Intent {
            db,
            coll,
            bson,
            metadata,
        });
    }
    Ok(out)
}

fn read_metadata(path: &Path) -> Result<Document, String> {
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut open_read(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?,
        &mut text,
    )
    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // An empty file is no metadata (mongorestore's reading): the collection gets no options.
    if text.trim().is_empty() {
        return Ok(Document::new());
    }
    parse_json(&text).map_err(|e| format!("{} is not mongodump metadata: {e}", path.display()))
}

async fn restore_one(
    client: &Client,
    intent: &Intent,
    args: &LoadOptions,
    tally: &mut Tally,
) -> Result<(), String> {
    let db = client.database(&intent.db);
    let ns = format!("{}.{}", intent.db, intent.coll);
    let mut exists = exists(&db, &intent.coll).await?;
    if exists && args.drop {
        println!("dropping collection {ns} before restoring");
        db.collection::<Document>(&intent.coll)
            .drop()
            .await
            .map_err(|e| format!("drop: {}", drv(&e)))?;
        exists = false;
    } else if exists {
        println!("restoring to existing collection {ns} without dropping");
    }
    if !exists {
        create(&db, intent).await?;
    }
    if intent.kind() == "view" {
        return Ok(());
    }
    if let Some(path) = &intent.bson {
        let coll = db.collection::<RawDocumentBuf>(&intent.coll);
        insert_file(&coll, path, args.batch_size, tally).await?;
    }
    if let Some(e) = &tally.first_error {
        println!(
            "{ns}: continuing through error: {e} ({} document(s) refused in all)",
            tally.failed
        );
    }
    if !args.no_index_restore {
        create_indexes(&db, intent).await?;
    }
    Ok(())
}

async fn exists(db: &Database, coll: &str) -> Result<bool, String> {
    let names = db
        .list_collection_names()
        .filter(doc! {"name": coll})
        .await
        .map_err(|e| format!("listCollections: {}", drv(&e)))?;
    Ok(!names.is_empty())
}

/// `create` with the metadata's options (none when there is no metadata file).
async fn create(db: &Database, intent: &Intent) -> Result<(), String> {
    let mut command = doc! {"create": &intent.coll};
    if let Some(Ok(options)) = intent.metadata.as_ref().map(|m| m.get_document("options")) {
        for (key, value) in options {
            command.insert(key.clone(), value.clone());
        }
    }
    db.run_command(command)
        .await
        .map(drop)
        .map_err(|e| format!("create with the dump's options: {}", drv(&e)))
}

/// The metadata's indexes but `_id` (created with the collection), without `v` and `ns` (the
/// server picks its index version, the namespace is the target's), as mongorestore does.
async fn create_indexes(db: &Database, intent: &Intent) -> Result<(), String> {
    let Some(Ok(indexes)) = intent.metadata.as_ref().map(|m| m.get_array("indexes")) else {
        return Ok(());
    };
    let mut specs = Vec::new();
    for index in indexes {
        let Bson::Document(spec) = index else {
            return Err(format!(
                "an index in the metadata is not a document: {index}"
            ));
        };
        if spec.get_str("name").ok() == Some("_id_")
            || spec.get_bool("clustered").ok() == Some(true)
        {
            continue;
        }
        let mut spec = spec.clone();
        spec.remove("v");
        spec.remove("ns");
        specs.push(Bson::Document(spec));
    }
    if specs.is_empty() {
        return Ok(());
    }
    db.run_command(doc! {"createIndexes": &intent.coll, "indexes": specs})
        .await
        .map(drop)
        .map_err(|e| format!("createIndexes: {}", drv(&e)))
}

/// Inserts the file's documents in batches; a damaged file's error comes after the documents
/// before the damage are inserted.
async fn insert_file(
    coll: &Collection<RawDocumentBuf>,
    path: &Path,
    batch_size: usize,
    tally: &mut Tally,
) -> Result<(), String> {
    let mut reader = BsonReader::open(path)?;
    let mut batch: Vec<RawDocumentBuf> = Vec::with_capacity(batch_size);
    let mut bytes = 0;
    loop {
        let next = reader.next_doc();
        let full = match &next {
            Ok(Some(doc)) => {
                batch.len() >= batch_size || bytes + doc.as_bytes().len() > BATCH_BYTES
            }
            _ => true,
        };
        if full && !batch.is_empty() {
            insert_batch(coll, &batch, tally).await?;
            batch.clear();
            bytes = 0;
        }
        match next? {
            Some(doc) => {
                bytes += doc.as_bytes().len();
                batch.push(doc);
            }
            None => return Ok(()),
        }
    }
}

/// One ordered insert; after a duplicate key or validation failure at document i, the rest of
/// the batch is sent again from i + 1 (mongorestore continues through those errors).
async fn insert_batch(
    coll: &Collection<RawDocumentBuf>,
    batch: &[RawDocumentBuf],
    tally: &mut Tally,
) -> Result<(), String> {
    let mut start = 0;
    while start < batch.len() {
        let rest = &batch[start..];
        let error = match coll.insert_many(rest).ordered(true).await {
            Ok(_) => {
                tally.restored += rest.len() as u64;
                return Ok(());
            }
            Err(e) => e,
        };
        let refused = match &*error.kind {
            ErrorKind::InsertMany(InsertManyError {
                write_errors: Some(errors),
                write_concern_error: None,
                ..
            }) => errors.first().filter(|w| IGNORABLE.contains(&w.code)),
            _ => None,
        };
        let Some(refused) = refused else {
            return Err(format!("insert: {}", drv(&error)));
        };
        tally.restored += refused.index as u64;
        tally.failed += 1;
        tally
            .first_error
            .get_or_insert_with(|| refused.message.clone());
        start += refused.index + 1;
    }
    Ok(())
}
