//! The log's control file, `log/control`: what the log must at least contain, so that a
//! missing or cut segment is found instead of silently replaying less.
//!
//! ```text
//! control = "MGVCTRL\0" | version u32 LE (1) | reserved u32
//!         | newest segment's first ts u64 | checkpoint ts u64
//!         | durable end: segment first ts u64 | offset u64 | last record ts u64
//!         | reserved (4 bytes) | crc32c u32 of the 60 bytes before it          (64 bytes)
//! ```
//!
//! Written whole to `control.tmp`, fdatasynced, renamed over `control`, and the directory
//! fdatasynced: a crash leaves the old or the new file, never a mix. It is rewritten when a
//! segment starts (the new newest, and the end of the sealed one as durable), after each
//! checkpoint (its timestamp), and at a clean shutdown (the exact durable end). Never per
//! commit: that would cost a second fdatasync for every group commit.
//!
//! Invariants: `newest` only grows; the durable end only moves forward; everything the control
//! file says was durable really was fdatasynced before the file was written.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{StorageError, Timestamp};

const MAGIC: &[u8; 8] = b"MGVCTRL\0";
const VERSION: u32 = 1;
const LEN: usize = 64;
pub(crate) const CONTROL_FILE: &str = "control";

/// The end of the log as far as it was known to be durable: a segment (by its first
/// timestamp), the offset where its valid records reached, and the last record's timestamp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurableEnd {
    pub segment: Timestamp,
    pub offset: u64,
    pub last_ts: Timestamp,
}

/// What the control file records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// The newest segment when the file was written (its first timestamp).
    pub newest: Timestamp,
    /// The checkpoint the base store held when the file was written.
    pub checkpoint: Timestamp,
    /// `None` until a segment is sealed or the server shuts down cleanly.
    pub durable: Option<DurableEnd>,
}

pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(CONTROL_FILE)
}

fn encode(control: &Control) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&control.newest.0.to_le_bytes());
    b[24..32].copy_from_slice(&control.checkpoint.0.to_le_bytes());
    let durable = control.durable.unwrap_or_default();
    b[32..40].copy_from_slice(&durable.segment.0.to_le_bytes());
    b[40..48].copy_from_slice(&durable.offset.to_le_bytes());
    b[48..56].copy_from_slice(&durable.last_ts.0.to_le_bytes());
    let crc = crc32c::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn decode(b: &[u8]) -> Result<Control, String> {
    if b.len() != LEN {
        return Err(format!("{} bytes, expected {LEN}", b.len()));
    }
    if &b[0..8] != MAGIC {
        return Err("not a Mangrove log control file (bad magic)".into());
    }
    let crc = u32::from_le_bytes([b[60], b[61], b[62], b[63]]);
    if crc32c::crc32c(&b[..60]) != crc {
        return Err("checksum mismatch".into());
    }
    let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if version != VERSION {
        return Err(format!(
            "version {version}, this build reads version {VERSION}"
        ));
    }
    let durable = DurableEnd {
        segment: Timestamp(u64_at(b, 32)),
        offset: u64_at(b, 40),
        last_ts: Timestamp(u64_at(b, 48)),
    };
    Ok(Control {
        newest: Timestamp(u64_at(b, 16)),
        checkpoint: Timestamp(u64_at(b, 24)),
        durable: (durable.segment != Timestamp::ZERO).then_some(durable),
    })
}

/// The control file of a log directory; `Ok(None)` if there is none. A damaged one is an
/// error naming it.
pub(crate) fn read(dir: &Path) -> Result<Option<Control>, StorageError> {
    let path = path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StorageError::io(
                format!("cannot read {}", path.display()),
                e,
            ));
        }
    };
    decode(&bytes)
        .map(Some)
        .map_err(|detail| StorageError::Corrupt {
            segment: path,
            offset: 0,
            detail,
        })
}

/// Replaces the control file atomically and durably.
pub(crate) fn write(dir: &Path, control: &Control) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{CONTROL_FILE}.tmp"));
    let fail = |what: &str, e: std::io::Error| {
        StorageError::io(format!("cannot {what} {}", tmp.display()), e)
    };
    let mut file = File::create(&tmp).map_err(|e| fail("create", e))?;
    file.write_all(&encode(control))
        .map_err(|e| fail("write", e))?;
    file.sync_data().map_err(|e| fail("sync", e))?;
    std::fs::rename(&tmp, path(dir)).map_err(|e| fail("rename", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(format!("cannot sync {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_damage() {
        let control = Control {
            newest: Timestamp(7 << 32),
            checkpoint: Timestamp(5 << 32),
            durable: Some(DurableEnd {
                segment: Timestamp(6 << 32),
                offset: 4096,
                last_ts: Timestamp((6 << 32) + 9),
            }),
        };
        let mut bytes = encode(&control);
        assert_eq!(decode(&bytes), Ok(control));
        for at in [0, 20, 45, 61] {
            bytes[at] ^= 0x10;
            assert!(decode(&bytes).is_err(), "flip at {at} not detected");
            bytes[at] ^= 0x10;
        }
        let none = Control {
            durable: None,
            ..control
        };
        assert_eq!(decode(&encode(&none)), Ok(none));
    }
}
