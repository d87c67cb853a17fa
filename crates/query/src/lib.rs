//! Query-language evaluation for Mangrove: BSON ordering, key encoding, filters, updates,
//! projections and sorts. Everything here is a pure function over BSON; the server owns I/O.
//!
//! Filters, sorts and projections read `RawDocument`s directly because they run once per
//! scanned document; updates work on owned `Document`s because they run once per write.
//!
//! Server-side JavaScript (`$where`, `$function`, `$accumulator`, mapReduce's internal
//! `$_internalJsEmit`/`$_internalJsReduce`) is called through `mangrove-js`, which is handed
//! source text and BSON; its clock and deadline are the server's to set, not this crate's.
//!
//! Known gaps relative to MongoDB 7.0 (each reports a clear error rather than misbehaving):
//! geo filters; `$meta` other than `"textScore"`; time zones other than UTC
//! and fixed offsets in date expressions; spilling to disk (`allowDiskUse`) of blocking stages
//! other than `$sort` and `$group`/`$bucket`; collation tailorings and options beyond strength and `numericOrdering`. Regular expressions use the `regex` crate, so PCRE-only constructs
//! (look-around, backreferences) are rejected as invalid (51091). Decimal128 is compared and
//! encoded through its nearest double; `$inc`/`$mul` on Decimal128 are exact to 34 digits
//! (doubles only for operands too wide for 128-bit coefficients).

// The value order, key encoding and paths live in `mangrove-bson` (the storage engine needs
// them without the language); imported here so the crate's `crate::compare::...` paths hold.
/// The one registry of error codes and their names (in the leaf crate, shared by every layer).
pub use mangrove_bson::error_codes;
use mangrove_bson::{compare, decimal, path};

mod accumulator;
mod aggregate;
mod bucket_auto;
mod dates;
mod densify;
mod doc_ops;
mod error;
mod expr;
mod filter;
mod geo_filter;
mod geo_plan;
mod geo_stage;
mod group;
mod group_spill;
mod index;
mod js_acc;
mod jsonschema;
mod limits;
mod lookup;
mod memory;
mod plan;
mod preds;
mod projection;
mod redact;
mod regex;
mod run_ctx;
mod sort;
mod spill;
mod stage;
mod stage_parse;
mod stream;
mod text;
mod text_meta;
mod top_n;
mod types;
mod update;
mod validation;
mod window;
mod window_fn;
mod window_spec;
mod window_spill;

pub use aggregate::{Pipeline, Sink, WhenMatched, WhenNotMatched, with_let};
pub use error::QueryError;
pub use filter::Filter;
pub use geo_filter::near_distance;
pub use geo_plan::{geo_field, near_frame};
pub use index::{
    IndexField, IndexSpec, MAX_KEYS_PER_DOCUMENT, PartialFilter, PartialFilters, compile_index,
    compile_partial, normalize_index, partial_filters,
};
pub use limits::{
    DEFAULT_MEMORY_LIMIT, Limits, MAX_BSON_OBJECT_BYTES, MAX_RESULT_DOCUMENT_BYTES,
    MAX_STRING_BYTES, MAX_VALUE_DEPTH, with_limits,
};
pub use mangrove_bson::{CodedError, KeyInterval, encode_key, encode_key_collated};
pub use mangrove_bson::{
    Collation, active_collation, collation_active, compare_values, type_bracket, with_collation,
};
pub use mangrove_bson::{RawWriter, distinct_values};
pub use mangrove_geo::{Frame, Near};
pub use mangrove_text::{TextIndex, TextMatch};
pub use plan::{IndexBounds, expired_bounds, index_bounds};
pub use projection::Projection;
pub use run_ctx::{Chunk, ForeignRead, ForeignSource, JoinStats, NoForeign, each_match_in};
pub use sort::SortSpec;
pub use spill::{RunHandle, RunReader, SpillFile, SpillStats, SpillStore};
pub use stream::{Runner, StageStats, Step};
pub use text::text_bounds;
pub use text_meta::{no_score, with_scorer};
pub use types::element_type_name;
pub use update::Update;
pub use validation::Validator;
