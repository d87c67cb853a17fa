//! The on-disk layout `mangrove dump` writes and `mangrove restore` reads: mongodump 100.x's
//! directory format.
//!
//! - `DIR/<db>/<coll>.bson`: the collection's documents, each a whole BSON document, one after
//!   another with nothing between them;
//! - `DIR/<db>/<coll>.metadata.json`: one Extended JSON v2 (canonical) object,
//!   `{"options":{…},"indexes":[…],"uuid":"<hex>","collectionName":"…","type":"…"}`, keys in
//!   that order, `options` and `uuid` left out when empty as mongodump does;
//! - both with a `.gz` suffix (gzip) under `--gzip`; `<coll>` is the collection name
//!   URL-query-escaped (Go's `url.QueryEscape`, as mongodump names its files).
//!
//! Invariants: a file is written under a `.partial` name and renamed into place only once it
//! is complete and synced, so a file with a final name is never a cut one; reading a `.bson`
//! file holds one document at a time, and any damage is reported with the file and the byte
//! offset of the document that is cut or malformed.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bson::{Bson, Document, RawDocumentBuf};
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

/// The suffix of a file still being written; readers skip such files.
pub const PARTIAL: &str = ".partial";

/// The largest document a server stores (16 MiB); a length past it (plus mongod's 16 KiB of
/// internal slack) in a `.bson` file means the file is damaged, not that the document is big.
pub const MAX_DOC: usize = 16 * 1024 * 1024 + 16 * 1024;

/// A collection's file name stem: Go's `url.QueryEscape` of its name, as mongodump writes it
/// (letters, digits and `-_.~` kept, space as `+`, every other byte as `%XX`).
pub fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The inverse of [`escape_name`]; a stem that is not valid escaping is taken as it is.
pub fn unescape_name(stem: &str) -> String {
    let bytes = stem.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| stem.to_string())
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// A file written under a `.partial` name and renamed to its final one by [`finish`]; dropped
/// unfinished (an error part way), the partial file is removed.
///
/// [`finish`]: AtomicFile::finish
pub struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    out: Option<Sink>,
}

enum Sink {
    Plain(BufWriter<File>),
    Gzip(GzEncoder<BufWriter<File>>),
}

impl AtomicFile {
    /// Creates `dest` + `.partial` (gzip-compressed when `gzip`; `dest` should then end in
    /// `.gz`).
    pub fn create(dest: PathBuf, gzip: bool) -> io::Result<AtomicFile> {
        let mut tmp = dest.clone().into_os_string();
        tmp.push(PARTIAL);
        let tmp = PathBuf::from(tmp);
        let file = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let out = if gzip {
            Sink::Gzip(GzEncoder::new(file, Compression::default()))
        } else {
            Sink::Plain(file)
        };
        Ok(AtomicFile {
            dest,
            tmp,
            out: Some(out),
        })
    }

    /// Flushes, syncs and renames the file to its final name.
    pub fn finish(mut self) -> io::Result<()> {
        let file = match self.out.take() {
            Some(Sink::Plain(w)) => w.into_inner().map_err(|e| e.into_error())?,
            Some(Sink::Gzip(w)) => w.finish()?.into_inner().map_err(|e| e.into_error())?,
            None => return Ok(()),
        };
        file.sync_all()?;
        std::fs::rename(&self.tmp, &self.dest)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.out.as_mut() {
            Some(Sink::Plain(w)) => w.write(buf),
            Some(Sink::Gzip(w)) => w.write(buf),
            None => Err(io::Error::other("file already finished")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(Sink::Plain(w)) => w.flush(),
            Some(Sink::Gzip(w)) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Opens a dump file for reading, decompressing it when its name ends in `.gz`.
pub fn open_read(path: &Path) -> io::Result<Box<dyn Read>> {
    let file = BufReader::with_capacity(1 << 20, File::open(path)?);
    if path.extension().is_some_and(|e| e == "gz") {
        Ok(Box::new(BufReader::new(MultiGzDecoder::new(file))))
    } else {
        Ok(Box::new(file))
    }
}

/// Reads a `.bson` file one document at a time, keeping the byte offset (in the uncompressed
/// stream) of the next one for error messages.
pub struct BsonReader {
    path: PathBuf,
    input: Box<dyn Read>,
    /// Offset of the next document in the (uncompressed) stream.
    pub offset: u64,
    /// Documents read so far.
    docs: u64,
}

impl BsonReader {
    pub fn open(path: &Path) -> Result<BsonReader, String> {
        let input = open_read(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        Ok(BsonReader {
            path: path.to_path_buf(),
            input,
            offset: 0,
            docs: 0,
        })
    }

    /// The next document, `Ok(None)` at a clean end of file, or an error naming the file, the
    /// offset of the damaged document and what to do.
    pub fn next_doc(&mut self) -> Result<Option<RawDocumentBuf>, String> {
        let mut len_bytes = [0u8; 4];
        let got = read_full(&mut self.input, &mut len_bytes).map_err(|e| self.damage(&e))?;
        if got == 0 {
            return Ok(None);
        }
        if got < 4 {
            return Err(self.damage("the file ends inside a document's length"));
        }
        let len = i32::from_le_bytes(len_bytes);
        if len < 5 || len as usize > MAX_DOC {
            return Err(self.damage(&format!("a document length of {len} bytes is impossible")));
        }
        let mut bytes = vec![0u8; len as usize];
        bytes[..4].copy_from_slice(&len_bytes);
        let got = read_full(&mut self.input, &mut bytes[4..]).map_err(|e| self.damage(&e))?;
        if got < bytes.len() - 4 {
            return Err(self.damage(&format!(
                "the file ends {} bytes into a {len}-byte document",
                got + 4
            )));
        }
        let doc = RawDocumentBuf::from_bytes(bytes)
            .map_err(|e| self.damage(&format!("not a BSON document: {e}")))?;
        if let Some(Err(e)) = doc.iter().find(Result::is_err) {
            return Err(self.damage(&format!("malformed BSON document: {e}")));
        }
        self.offset += len as u64;
        self.docs += 1;
        Ok(Some(doc))
    }

    fn damage(&self, what: &(impl std::fmt::Display + ?Sized)) -> String {
        let gz = if self.path.extension().is_some_and(|e| e == "gz") {
            " of the uncompressed data"
        } else {
            ""
        };
        format!(
            "{} is damaged at byte offset {}{gz} (after {} whole documents): {what}. The file was \
             cut short or corrupted after it was written; the documents before the damage were \
             loaded, nothing after it. Dump the collection again, or restore it with --drop from \
             a good copy",
            self.path.display(),
            self.offset,
            self.docs,
        )
    }
}

/// Reads until `buf` is full or the input ends; the number of bytes read.
fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> Result<usize, String> {
    let mut done = 0;
    while done < buf.len() {
        match input.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read error: {e}")),
        }
    }
    Ok(done)
}

/// A document as canonical Extended JSON v2, keys in the document's order (serde_json's own
/// objects would sort them, and an index's key order is its meaning).
pub fn canonical_json(doc: &Document) -> String {
    let mut out = String::new();
    write_doc(doc, &mut out);
    out
}

fn write_doc(doc: &Document, out: &mut String) {
    out.push('{');
    for (i, (key, value)) in doc.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::String(key.clone()).to_string());
        out.push(':');
        write_value(value, out);
    }
    out.push('}');
}

fn write_value(value: &Bson, out: &mut String) {
    match value {
        Bson::Document(d) => write_doc(d, out),
        Bson::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Bson::JavaScriptCodeWithScope(c) => {
            out.push_str("{\"$code\":");
            out.push_str(&serde_json::Value::String(c.code.clone()).to_string());
            out.push_str(",\"$scope\":");
            write_doc(&c.scope, out);
            out.push('}');
        }
        other => out.push_str(&other.clone().into_canonical_extjson().to_string()),
    }
}

/// Parses Extended JSON (canonical or relaxed) into a document, keeping its keys' order.
pub fn parse_json(text: &str) -> Result<Document, String> {
    serde_json::from_str::<Document>(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Decimal128, doc, oid::ObjectId};

    #[test]
    fn names_escape_like_go_query_escape_and_back() {
        assert_eq!(escape_name("a b/c%d.e~f"), "a+b%2Fc%25d.e~f");
        for name in ["plain", "a b/c%d", "naïve", "x%zz", "%"] {
            assert_eq!(unescape_name(&escape_name(name)), name);
        }
        assert_eq!(unescape_name("x%zz"), "x%zz");
    }

    #[test]
    fn metadata_json_keeps_key_order_and_types() {
        let d = doc! {
            "indexes": [{"v": 2, "key": {"z": 1, "a": -1}, "name": "z_1_a_-1"}],
            "n": 5_i64, "f": 1.5, "dec": Decimal128::from_bytes([1; 16]),
            "id": ObjectId::from_bytes([7; 12]),
        };
        let text = canonical_json(&d);
        assert!(text.contains(r#""key":{"z":{"$numberInt":"1"},"a":{"$numberInt":"-1"}}"#));
        assert_eq!(parse_json(&text).unwrap(), d);
    }
}
