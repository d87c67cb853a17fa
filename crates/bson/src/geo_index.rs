//! Geospatial index fields: `"2dsphere"` (GeoJSON and legacy pairs on the sphere, index
//! version 3) and `"2d"` (legacy pairs on a flat square, `min`/`max`/`bits`). A geo field's key
//! components are the numbers of the cells covering its value (`mangrove-geo`), encoded as
//! int64s like any other value, so transactions, snapshots and recovery treat them as ordinary
//! index entries.
//!
//! Invariant: geometry is `mangrove-geo`'s; this file only reads the specification's options,
//! turns a value into cell numbers, and reports mongod's errors (16755 "Can't extract geo
//! keys" for a malformed 2dsphere value, 13027/16804 for 2d). A geo index leaves out documents
//! whose geo fields are all missing or null (2dsphere version 2+ is sparse on its geo fields).

use bson::{Bson, Document, RawBsonRef, RawDocument};
use mangrove_geo::{Frame, MAX_LEVEL};

use crate::error::CodedError;
use crate::path::walk;

/// Which geo index a field is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeoKind {
    Sphere,
    Flat(Plane),
}

/// A `2d` field's plane: the square `[min, max)` divided `bits` times (f64s kept as their bits
/// so that the kind stays `Eq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plane {
    min: u64,
    max: u64,
    pub bits: u8,
}

impl Plane {
    pub fn frame(&self) -> Frame {
        Frame::square(f64::from_bits(self.min), f64::from_bits(self.max))
    }
}

impl Default for Plane {
    fn default() -> Self {
        Plane {
            min: (-180f64).to_bits(),
            max: 180f64.to_bits(),
            bits: 26,
        }
    }
}

fn number(v: Option<&Bson>) -> Option<f64> {
    match v? {
        Bson::Double(d) => Some(*d),
        Bson::Int32(i) => Some(*i as f64),
        Bson::Int64(i) => Some(*i as f64),
        _ => None,
    }
}

fn cannot_create(message: impl Into<String>) -> CodedError {
    CodedError::new(67, "CannotCreateIndex", message)
}

/// Copies the geo options of a specification into its normalized form: `2dsphereIndexVersion`
/// (3 unless given) for a 2dsphere index, `min`/`max`/`bits` as given for a 2d index.
pub fn normalize(spec: &Document, key: &Document, out: &mut Document) -> Result<(), CodedError> {
    let has = |kind: &str| {
        key.values()
            .any(|v| matches!(v, Bson::String(s) if s == kind))
    };
    if has("2dsphere") {
        let version = match spec.get("2dsphereIndexVersion") {
            None => 3,
            Some(v) => match number(Some(v)) {
                Some(n) if [1.0, 2.0, 3.0].contains(&n) => n as i32,
                _ => {
                    return Err(cannot_create(format!(
                        "unsupported geo index version {{ 2dsphereIndexVersion : {v} }}, only support versions: [1,2,3]"
                    )));
                }
            },
        };
        out.insert("2dsphereIndexVersion", version);
    }
    if has("2d") {
        for option in ["min", "max", "bits"] {
            if let Some(v) = spec.get(option) {
                out.insert(option, v.clone());
            }
        }
    }
    Ok(())
}

/// Checks where a key pattern's 2d fields are (`flat`: one flag per field) and returns the
/// plane the specification gives them.
pub fn configure(flat: &[bool], spec: &Document) -> Result<Plane, CodedError> {
    let count = flat.iter().filter(|f| **f).count();
    if count > 1 {
        return Err(cannot_create("2d index can only have one 2d field"));
    }
    if count == 1 && !flat[0] {
        return Err(cannot_create("2d has to be first in index"));
    }
    let mut plane = Plane::default();
    if let Some(min) = number(spec.get("min")) {
        plane.min = min.to_bits();
    }
    if let Some(max) = number(spec.get("max")) {
        plane.max = max.to_bits();
    }
    if let Some(bits) = number(spec.get("bits")) {
        if !(1.0..=32.0).contains(&bits) {
            return Err(cannot_create("bits in geo index must be between 1 and 32"));
        }
        plane.bits = (bits as u8).min(MAX_LEVEL);
    }
    let (lo, hi) = (f64::from_bits(plane.min), f64::from_bits(plane.max));
    if !(hi - lo).is_finite() || lo >= hi {
        return Err(cannot_create("max must be greater than min"));
    }
    Ok(plane)
}

/// The cell numbers of a geo field in `doc` (every value its path reaches), as int64 key
/// components; empty when the field is missing or null.
pub fn cells(kind: GeoKind, parts: &[String], doc: &RawDocument) -> Result<Vec<i64>, CodedError> {
    let mut values = Vec::new();
    walk(doc, parts, false, &mut |v| {
        if let Some(v) = v {
            values.push(v);
        }
        false
    });
    let mut out = Vec::new();
    for v in values {
        out.extend(value_cells(kind, v, doc)?);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out.into_iter().map(|c| c as i64).collect())
}

fn value_cells(
    kind: GeoKind,
    v: RawBsonRef<'_>,
    doc: &RawDocument,
) -> Result<Vec<u64>, CodedError> {
    let shown = || {
        Document::try_from(doc)
            .map(|d| d.to_string())
            .unwrap_or_default()
    };
    match kind {
        GeoKind::Sphere => mangrove_geo::sphere_keys(v).map_err(|why| {
            CodedError::location(16755, format!("Can't extract geo keys: {}  {why}", shown()))
        }),
        GeoKind::Flat(plane) => {
            mangrove_geo::flat_keys(v, &plane.frame(), plane.bits).map_err(|(code, why)| {
                CodedError::location(code, format!("{why} :: caused by :: {}", shown()))
            })
        }
    }
}
