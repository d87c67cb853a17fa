//! JavaScript failures as mongod reports them: JSInterpreterFailure (139) with the thrown
//! exception's name and message.

use mangrove_bson::CodedError;
use rquickjs::Ctx;

/// mongod's JSInterpreterFailure (139), the code of every JavaScript compile or run failure.
pub fn js_failure(message: impl Into<String>) -> CodedError {
    CodedError::new(139, "JSInterpreterFailure", message)
}

/// An rquickjs error as mongod reports a JavaScript failure (JSInterpreterFailure, 139), with
/// the thrown exception's name and message.
pub(crate) fn describe(ctx: &Ctx<'_>, e: rquickjs::Error) -> CodedError {
    match e {
        rquickjs::Error::Exception => {
            let thrown = ctx.catch();
            let text = match thrown.as_exception() {
                Some(ex) => {
                    let name: String = ex.get("name").unwrap_or_else(|_| "Error".into());
                    format!("{name}: {}", ex.message().unwrap_or_default())
                }
                // QuickJS throws a bare null when even its out-of-memory error cannot be made.
                None if thrown.is_null() => format!(
                    "Out of memory (or an uncaught null): the JavaScript heap limit is {} MiB",
                    crate::limits().memory_bytes >> 20
                ),
                None => thrown
                    .as_string()
                    .and_then(|s| s.to_string().ok())
                    .unwrap_or_else(|| format!("uncaught {}", thrown.type_name())),
            };
            js_failure(text)
        }
        rquickjs::Error::Allocation => js_failure("Out of memory"),
        other => js_failure(other.to_string()),
    }
}
