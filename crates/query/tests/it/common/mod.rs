use bson::{Document, RawDocumentBuf};
use mangrove_query::{Filter, QueryError};

pub fn raw(d: &Document) -> RawDocumentBuf {
    RawDocumentBuf::try_from(d).expect("test document converts to raw")
}

pub fn filter(f: Document) -> Filter {
    Filter::parse(&raw(&f)).unwrap_or_else(|e| panic!("filter {f} failed to parse: {e}"))
}

pub fn filter_err(f: Document) -> QueryError {
    match Filter::parse(&raw(&f)) {
        Ok(_) => panic!("filter {f} unexpectedly parsed"),
        Err(e) => e,
    }
}

pub fn matches(f: Document, d: Document) -> bool {
    filter(f).matches(&raw(&d))
}

pub fn re(pattern: &str, options: &str) -> bson::Regex {
    bson::Regex {
        pattern: pattern.try_into().expect("pattern has no NUL"),
        options: options.try_into().expect("options have no NUL"),
    }
}
