//! BSON to JavaScript and back, as mongod's shell types do it (roughly; the differences are
//! listed in lib.rs). Every BSON type either converts or is refused with a coded error; no
//! value is silently dropped.
//!
//! Numbers: BSON doubles and 32-bit integers become JS numbers, and JS numbers come back as
//! doubles (mongod's rule), so `emit(this.a, 1)` over `{a: 1}` keys on `1.0`. 64-bit integers
//! and decimals keep their type as `NumberLong`/`NumberDecimal` objects (prelude.js).

use base64::Engine as _;
use bson::spec::BinarySubtype;
use bson::{Binary, Bson, Document, RawDocument, Regex, Timestamp};
use mangrove_bson::CodedError;
use rquickjs::function::Constructor;
use rquickjs::{Array, Ctx, Function, Object, Value};

use crate::error::{describe, js_failure};

/// Values nested deeper than this are refused both ways (mongod's BSON depth bound).
pub(crate) const MAX_DEPTH: usize = 150;

/// The prelude's constructors, looked up once per call so `instanceof` checks are cheap.
pub(crate) struct Types<'js> {
    ctx: Ctx<'js>,
    date: Constructor<'js>,
    regexp: Constructor<'js>,
    oid: Constructor<'js>,
    long: Constructor<'js>,
    int: Constructor<'js>,
    decimal: Constructor<'js>,
    ts: Constructor<'js>,
    bin: Constructor<'js>,
    min: Constructor<'js>,
    max: Constructor<'js>,
}

impl<'js> Types<'js> {
    pub(crate) fn new(ctx: &Ctx<'js>) -> rquickjs::Result<Types<'js>> {
        let g = ctx.globals();
        Ok(Types {
            ctx: ctx.clone(),
            date: g.get("Date")?,
            regexp: g.get("RegExp")?,
            oid: g.get("ObjectId")?,
            long: g.get("NumberLong")?,
            int: g.get("NumberInt")?,
            decimal: g.get("NumberDecimal")?,
            ts: g.get("Timestamp")?,
            bin: g.get("BinData")?,
            min: g.get("MinKey")?,
            max: g.get("MaxKey")?,
        })
    }

    /// A raw document as a JS object (`this` of `$where`, `map`).
    pub(crate) fn doc_from_raw(&self, doc: &RawDocument) -> Result<Value<'js>, CodedError> {
        let doc = Document::try_from(doc).map_err(|e| js_failure(format!("invalid BSON: {e}")))?;
        self.doc(&doc, 0)
    }

    pub(crate) fn doc(&self, doc: &Document, depth: usize) -> Result<Value<'js>, CodedError> {
        let obj = Object::new(self.ctx.clone()).map_err(|e| self.err(e))?;
        for (k, v) in doc {
            let v = self.value(v, depth + 1)?;
            obj.set(k.as_str(), v).map_err(|e| self.err(e))?;
        }
        Ok(obj.into_value())
    }

    /// One BSON value as JS.
    pub(crate) fn value(&self, v: &Bson, depth: usize) -> Result<Value<'js>, CodedError> {
        if depth > MAX_DEPTH {
            return Err(js_failure("value nested too deeply for JavaScript"));
        }
        let ctx = self.ctx.clone();
        let made: rquickjs::Result<Value<'js>> = match v {
            Bson::Double(d) => Ok(Value::new_float(ctx, *d)),
            Bson::Int32(i) => Ok(Value::new_int(ctx, *i)),
            Bson::String(s) => rquickjs::String::from_str(ctx, s).map(|s| s.into_value()),
            Bson::Boolean(b) => Ok(Value::new_bool(ctx, *b)),
            Bson::Null => Ok(Value::new_null(ctx)),
            Bson::Undefined => Ok(Value::new_undefined(ctx)),
            Bson::Array(items) => return self.array(items, depth),
            Bson::Document(d) => return self.doc(d, depth),
            Bson::DateTime(d) => self.date.construct((d.timestamp_millis() as f64,)),
            Bson::ObjectId(o) => self.oid.construct((o.to_hex(),)),
            Bson::Int64(i) => self.long.construct((i.to_string(),)),
            Bson::Decimal128(d) => self.decimal.construct((d.to_string(),)),
            Bson::Timestamp(t) => self.ts.construct((t.time, t.increment)),
            Bson::Binary(b) => self.bin.construct((
                u8::from(b.subtype) as i32,
                base64::engine::general_purpose::STANDARD.encode(&b.bytes),
            )),
            Bson::RegularExpression(r) => self
                .regexp
                .construct((r.pattern.to_string(), js_flags(r.options.as_str()))),
            Bson::MinKey => self.min.construct(()),
            Bson::MaxKey => self.max.construct(()),
            Bson::Symbol(s) => rquickjs::String::from_str(ctx, s).map(|s| s.into_value()),
            Bson::JavaScriptCode(code) => {
                rquickjs::String::from_str(ctx, code).map(|s| s.into_value())
            }
            other => {
                return Err(js_failure(format!(
                    "cannot convert BSON type {:?} to JavaScript",
                    other.element_type()
                )));
            }
        };
        made.map_err(|e| self.err(e))
    }

    fn array(&self, items: &[Bson], depth: usize) -> Result<Value<'js>, CodedError> {
        let arr = Array::new(self.ctx.clone()).map_err(|e| self.err(e))?;
        for (i, item) in items.iter().enumerate() {
            arr.set(i, self.value(item, depth + 1)?)
                .map_err(|e| self.err(e))?;
        }
        Ok(arr.into_value())
    }

    /// A JS value as BSON: numbers become doubles, functions their source as Code,
    /// `undefined` null (at the top; inside objects and arrays too, as BSON has no
    /// "missing" element).
    pub(crate) fn to_bson(&self, v: &Value<'js>, depth: usize) -> Result<Bson, CodedError> {
        if depth > MAX_DEPTH {
            return Err(js_failure("value nested too deeply for BSON"));
        }
        if v.is_null() || v.is_undefined() {
            return Ok(Bson::Null);
        }
        if let Some(b) = v.as_bool() {
            return Ok(Bson::Boolean(b));
        }
        if let Some(n) = v.as_number() {
            return Ok(Bson::Double(n));
        }
        if let Some(s) = v.as_string() {
            return Ok(Bson::String(s.to_string().map_err(|e| self.err(e))?));
        }
        if v.is_big_int() {
            let n: i64 = v.get().map_err(|e| self.err(e))?;
            return Ok(Bson::Int64(n));
        }
        if let Some(f) = v.as_function() {
            let src: String = f
                .get::<_, Function>("toString")
                .and_then(|ts| ts.call((rquickjs::function::This(f.clone()),)))
                .map_err(|e| self.err(e))?;
            return Ok(Bson::JavaScriptCode(src));
        }
        if let Some(arr) = v.as_array() {
            let mut out = Vec::with_capacity(arr.len());
            for item in arr.iter::<Value>() {
                out.push(self.to_bson(&item.map_err(|e| self.err(e))?, depth + 1)?);
            }
            return Ok(Bson::Array(out));
        }
        match v.as_object() {
            Some(obj) => self.object_to_bson(obj, depth),
            None => Err(js_failure(format!(
                "cannot convert a JavaScript {} to BSON",
                v.type_name()
            ))),
        }
    }

    fn object_to_bson(&self, obj: &Object<'js>, depth: usize) -> Result<Bson, CodedError> {
        if let Some(special) = self.special(obj)? {
            return Ok(special);
        }
        let mut doc = Document::new();
        for prop in obj.props::<String, Value>() {
            let (k, v) = prop.map_err(|e| self.err(e))?;
            if v.is_function() {
                continue;
            }
            doc.insert(k, self.to_bson(&v, depth + 1)?);
        }
        Ok(Bson::Document(doc))
    }

    /// The prelude's types, dates and regular expressions, by their constructor.
    fn special(&self, obj: &Object<'js>) -> Result<Option<Bson>, CodedError> {
        let e = |e| self.err(e);
        let s = |name: &str| obj.get::<_, String>(name).map_err(e);
        Ok(Some(if obj.is_instance_of(&self.date) {
            let f: Function = obj.get("getTime").map_err(e)?;
            let ms: f64 = f
                .call((rquickjs::function::This(obj.clone()),))
                .map_err(e)?;
            if !ms.is_finite() {
                return Err(js_failure("cannot convert an invalid Date to BSON"));
            }
            Bson::DateTime(bson::DateTime::from_millis(ms as i64))
        } else if obj.is_instance_of(&self.oid) {
            let oid = bson::oid::ObjectId::parse_str(s("str")?)
                .map_err(|e| js_failure(format!("invalid ObjectId: {e}")))?;
            Bson::ObjectId(oid)
        } else if obj.is_instance_of(&self.long) {
            let n = s("__long")?
                .parse::<i64>()
                .map_err(|_| js_failure("NumberLong out of range"))?;
            Bson::Int64(n)
        } else if obj.is_instance_of(&self.int) {
            Bson::Int32(obj.get::<_, i32>("__int").map_err(e)?)
        } else if obj.is_instance_of(&self.decimal) {
            let d = s("__decimal")?
                .parse::<bson::Decimal128>()
                .map_err(|_| js_failure("invalid NumberDecimal"))?;
            Bson::Decimal128(d)
        } else if obj.is_instance_of(&self.ts) {
            Bson::Timestamp(Timestamp {
                time: obj.get::<_, u32>("t").map_err(e)?,
                increment: obj.get::<_, u32>("i").map_err(e)?,
            })
        } else if obj.is_instance_of(&self.bin) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s("base64")?)
                .map_err(|_| js_failure("invalid BinData base64"))?;
            let subtype = BinarySubtype::from(obj.get::<_, i32>("type").map_err(e)? as u8);
            Bson::Binary(Binary { subtype, bytes })
        } else if obj.is_instance_of(&self.regexp) {
            let flags = bson_flags(&s("flags")?);
            let bad =
                |e: bson::error::Error| js_failure(format!("invalid regular expression: {e}"));
            Bson::RegularExpression(Regex {
                pattern: s("source")?.try_into().map_err(bad)?,
                options: flags.try_into().map_err(bad)?,
            })
        } else if obj.is_instance_of(&self.min) {
            Bson::MinKey
        } else if obj.is_instance_of(&self.max) {
            Bson::MaxKey
        } else {
            return Ok(None);
        }))
    }

    fn err(&self, e: rquickjs::Error) -> CodedError {
        describe(&self.ctx, e)
    }
}

/// BSON regex options JS knows (`i m s`; `u` for good measure); `x` and `l` have no JS form.
fn js_flags(options: &str) -> String {
    options
        .chars()
        .filter(|c| matches!(c, 'i' | 'm' | 's' | 'u'))
        .collect()
}

fn bson_flags(flags: &str) -> String {
    let mut f: Vec<char> = flags
        .chars()
        .filter(|c| matches!(c, 'i' | 'm' | 's' | 'u'))
        .collect();
    f.sort_unstable();
    f.into_iter().collect()
}
