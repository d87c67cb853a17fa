//! `mangrove dump` and `mangrove restore --dump`: logical backups in mongodump 100.x's
//! directory layout (see `dump_format.rs`), so a dump moves to and from MongoDB's own tools.
//!
//! Both are ordinary clients of a running server: they connect with the MongoDB Rust driver, so
//! the `--uri` carries authentication (`mongodb://user:pass@host/?authSource=admin`) and TLS
//! (`?tls=true&tlsCAFile=ca.pem`) as for any driver. This file owns the command lines and the
//! dump side; `dump_load.rs` owns loading.
//!
//! Invariants: documents are streamed from the server's cursor straight into the file, never
//! held together in memory; every file is written under a temporary name and renamed when
//! complete, so an interrupted dump leaves `*.partial` files, never a cut file under a final
//! name. What is dumped follows mongodump: `local` only when `--db` names it, `admin` and
//! `config` likewise (Mangrove's users and roles are not part of a dump); in other databases
//! `system.*` collections are skipped except `system.js`; views get a metadata file and no
//! data file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bson::{Bson, Document, RawDocumentBuf, doc};
use clap::Args;
use mongodb::Client;

use crate::dump_format::{AtomicFile, canonical_json, escape_name, parse_json};
use crate::dump_load::{LoadOptions, connect, drv};

/// The databases a dump of everything leaves out unless `--db` names them.
const SYSTEM_DBS: [&str; 3] = ["admin", "local", "config"];

#[derive(Args)]
pub struct DumpArgs {
    /// The server to dump, as a MongoDB connection string; user, password, authSource and TLS
    /// options (tls=true, tlsCAFile=…, tlsCertificateKeyFile=…) go in it.
    #[arg(long, default_value = "mongodb://127.0.0.1:27017")]
    uri: String,
    /// Directory to write the dump into (created if missing): <OUT>/<db>/<coll>.bson and
    /// <coll>.metadata.json, as mongodump writes them.
    #[arg(long, default_value = "dump", value_name = "DIR")]
    out: PathBuf,
    /// Dump only this database (admin, local and config are dumped only when named here).
    #[arg(long)]
    db: Option<String>,
    /// Dump only this collection (needs --db).
    #[arg(long, requires = "db")]
    collection: Option<String>,
    /// Compress every file with gzip (adds .gz to the names).
    #[arg(long)]
    gzip: bool,
    /// Dump only the documents matching this filter, in Extended JSON (needs --collection),
    /// e.g. '{"qty": {"$gt": 5}}'.
    #[arg(long, requires = "collection")]
    query: Option<String>,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// Load a mongodump directory (as `mangrove dump` or mongodump writes it) into the server
    /// at --uri.
    #[arg(long, value_name = "DIR")]
    pub dump: Option<PathBuf>,
    /// The server to load into, as a MongoDB connection string (auth and TLS options in it).
    #[arg(long, default_value = "mongodb://127.0.0.1:27017")]
    uri: String,
    /// Drop each collection before restoring it (otherwise documents are added to an existing
    /// one, and those whose _id is already there count as failures).
    #[arg(long)]
    drop: bool,
    /// Restore only this database.
    #[arg(long)]
    db: Option<String>,
    /// Restore only this collection (needs --db).
    #[arg(long, requires = "db")]
    collection: Option<String>,
    /// Do not create the indexes recorded in the metadata (the _id index always exists).
    #[arg(long)]
    no_index_restore: bool,
    /// Most documents per insert (each insert also stays within 16 MiB).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_size: u32,
}

/// `mangrove dump`.
pub fn run_dump(args: DumpArgs) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(dump(&args))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("mangrove dump: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `mangrove restore`: loads a dump directory (`--dump DIR`).
pub fn run_restore(args: RestoreArgs) -> ExitCode {
    let Some(dir) = args.dump.clone() else {
        eprintln!("mangrove restore: pass --dump DIR to load a mongodump directory");
        return ExitCode::from(2);
    };
    let options = LoadOptions {
        uri: args.uri,
        drop: args.drop,
        db: args.db,
        collection: args.collection,
        no_index_restore: args.no_index_restore,
        batch_size: args.batch_size as usize,
    };
    match runtime().and_then(|rt| rt.block_on(crate::dump_load::restore(&options, &dir))) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("mangrove restore: {message}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// One collection or view as `listCollections` describes it.
struct CollInfo {
    name: String,
    kind: String,
    options: Document,
    uuid: Option<String>,
}

async fn dump(args: &DumpArgs) -> Result<(), String> {
    let client = connect(&args.uri, "mangrove dump").await?;
    let filter = match &args.query {
        Some(text) => parse_json(text).map_err(|e| format!("--query is not Extended JSON: {e}"))?,
        None => Document::new(),
    };
    let dbs = match &args.db {
        Some(db) => vec![db.clone()],
        None => {
            let mut names = client
                .list_database_names()
                .await
                .map_err(|e| format!("listDatabases: {}", drv(&e)))?;
            names.retain(|n| !SYSTEM_DBS.contains(&n.as_str()));
            names.sort();
            names
        }
    };
    for db in &dbs {
        let colls = collections(&client, db, args).await?;
        if colls.is_empty() {
            if let Some(c) = &args.collection {
                eprintln!("mangrove dump: warning: {db}.{c} does not exist; nothing dumped");
            }
            continue;
        }
        let dir = args.out.join(db);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for info in &colls {
            dump_collection(&client, &dir, db, info, args, &filter).await?;
        }
    }
    Ok(())
}

/// The collections and views of `db` a dump takes, by name.
async fn collections(client: &Client, db: &str, args: &DumpArgs) -> Result<Vec<CollInfo>, String> {
    let mut command = doc! {"listCollections": 1};
    if let Some(name) = &args.collection {
        command.insert("filter", doc! {"name": name});
    }
    let mut cursor = client
        .database(db)
        .run_cursor_command(command)
        .await
        .map_err(|e| format!("listCollections on {db}: {}", drv(&e)))?;
    let mut out = Vec::new();
    while cursor
        .advance()
        .await
        .map_err(|e| format!("listCollections on {db}: {}", drv(&e)))?
    {
        let spec = cursor
            .deserialize_current()
            .map_err(|e| format!("listCollections on {db}: {}", drv(&e)))?;
        let info = coll_info(&spec);
        if args.collection.is_some() || !skip_system(db, &info.name, args.db.is_some()) {
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn coll_info(spec: &Document) -> CollInfo {
    let uuid = match spec.get_document("info").ok().and_then(|i| i.get("uuid")) {
        Some(Bson::Binary(b)) => Some(b.bytes.iter().map(|x| format!("{x:02x}")).collect()),
        _ => None,
    };
    CollInfo {
        name: spec.get_str("name").unwrap_or_default().to_string(),
        kind: spec.get_str("type").unwrap_or("collection").to_string(),
        options: spec.get_document("options").cloned().unwrap_or_default(),
        uuid,
    }
}

/// mongodump's rule for system namespaces: `admin.system.keys` never; `config` only what
/// `--db config` asks for; elsewhere `system.*` but `system.js`; and no names with `$`.
fn skip_system(db: &str, coll: &str, db_named: bool) -> bool {
    let skip = match db {
        "admin" => coll == "system.keys",
        "config" => !db_named,
        _ => coll.starts_with("system.") && coll != "system.js",
    };
    skip || coll.contains('$')
}

async fn dump_collection(
    client: &Client,
    dir: &Path,
    db: &str,
    info: &CollInfo,
    args: &DumpArgs,
    filter: &Document,
) -> Result<(), String> {
    let gz = if args.gzip { ".gz" } else { "" };
    let stem = escape_name(&info.name);
    let count = if info.kind == "view" {
        None
    } else {
        let path = dir.join(format!("{stem}.bson{gz}"));
        Some(dump_documents(client, db, &info.name, &path, args.gzip, filter).await?)
    };
    let meta = metadata(client, db, info).await?;
    let path = dir.join(format!("{stem}.metadata.json{gz}"));
    let write = |path: PathBuf| -> std::io::Result<()> {
        let mut file = AtomicFile::create(path, args.gzip)?;
        std::io::Write::write_all(&mut file, canonical_json(&meta).as_bytes())?;
        file.finish()
    };
    write(path.clone()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    match count {
        Some(n) => println!("done dumping {db}.{} ({n} documents)", info.name),
        None => println!("done dumping {db}.{} (view: metadata only)", info.name),
    }
    Ok(())
}

/// Streams the collection's documents matching `filter` into `path`; their number.
async fn dump_documents(
    client: &Client,
    db: &str,
    coll: &str,
    path: &Path,
    gzip: bool,
    filter: &Document,
) -> Result<u64, String> {
    let collection = client.database(db).collection::<RawDocumentBuf>(coll);
    let sized = filter.is_empty();
    let bar = progress_bar(&collection, &format!("{db}.{coll}"), sized).await;
    let fail = |e: &mongodb::error::Error| format!("dumping {db}.{coll}: {}", drv(e));
    let mut file = AtomicFile::create(path.to_path_buf(), gzip)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut cursor = collection
        .find(filter.clone())
        .await
        .map_err(|e| fail(&e))?;
    let mut n = 0u64;
    while cursor.advance().await.map_err(|e| fail(&e))? {
        std::io::Write::write_all(&mut file, cursor.current().as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        n += 1;
        bar.inc(1);
    }
    file.finish()
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    bar.finish_and_clear();
    Ok(n)
}

/// A bar on stderr when stderr is a terminal (sized by the estimated count when `sized`);
/// hidden otherwise.
async fn progress_bar(
    collection: &mongodb::Collection<RawDocumentBuf>,
    label: &str,
    sized: bool,
) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    // With --query the collection's count is no bound: count up without a bar.
    let (bar, template) = if sized {
        let total = collection.estimated_document_count().await.unwrap_or(0);
        let bar = indicatif::ProgressBar::new(total);
        (bar, "{msg} [{bar:30}] {pos}/{len} docs ({eta})")
    } else {
        (
            indicatif::ProgressBar::new_spinner(),
            "{msg} {spinner} {pos} docs",
        )
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(label.to_string());
    bar
}

/// The `.metadata.json` document: mongodump's fields in its order; a view has no indexes.
async fn metadata(client: &Client, db: &str, info: &CollInfo) -> Result<Document, String> {
    let mut indexes = Vec::new();
    if info.kind != "view" {
        let mut cursor = client
            .database(db)
            .run_cursor_command(doc! {"listIndexes": &info.name})
            .await
            .map_err(|e| format!("listIndexes on {db}.{}: {}", info.name, drv(&e)))?;
        while cursor
            .advance()
            .await
            .map_err(|e| format!("listIndexes on {db}.{}: {}", info.name, drv(&e)))?
        {
            let spec: Document = cursor
                .deserialize_current()
                .map_err(|e| format!("listIndexes on {db}.{}: {}", info.name, drv(&e)))?;
            indexes.push(Bson::Document(spec));
        }
    }
    let mut meta = Document::new();
    if !info.options.is_empty() {
        meta.insert("options", info.options.clone());
    }
    meta.insert("indexes", indexes);
    if let Some(uuid) = &info.uuid {
        meta.insert("uuid", uuid);
    }
    meta.insert("collectionName", &info.name);
    meta.insert("type", &info.kind);
    Ok(meta)
}
