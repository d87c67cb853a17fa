//! The subject of a client certificate as MONGODB-X509 names its user: the certificate's
//! subject distinguished name in RFC 2253 form (`CN=client,OU=...,O=...`, last RDN first).
//!
//! The certificate was verified against `--tls-ca-file` by rustls before this reads it; this
//! only walks its DER down to the subject (a few nested lengths), bounded by the certificate's
//! own bytes: any malformed length gives `None`, never a panic.

/// One DER element: its tag, contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const VERSION: u8 = 0xa0;

/// The subject DN of a DER certificate, RFC 2253 style.
pub fn subject_dn(cert: &[u8]) -> Option<String> {
    let (SEQUENCE, certificate, _) = element(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == VERSION {
        rest = after;
    }
    // serial, signature algorithm, issuer, validity: then the subject.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, subject, _) = element(rest)? else {
        return None;
    };
    let mut rdns = Vec::new();
    let mut names = subject;
    while !names.is_empty() {
        let (SET, set, next) = element(names)? else {
            return None;
        };
        rdns.push(rdn(set)?);
        names = next;
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// One relative distinguished name: its attributes joined by '+'.
fn rdn(mut set: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    while !set.is_empty() {
        let (SEQUENCE, attr, next) = element(set)? else {
            return None;
        };
        let (OID, oid, value) = element(attr)? else {
            return None;
        };
        let (_, text, _) = element(value)?;
        let text = String::from_utf8(text.to_vec()).ok()?;
        parts.push(format!("{}={}", attribute_name(oid), escape(&text)));
        set = next;
    }
    Some(parts.join("+"))
}

/// RFC 2253's (and OpenSSL's) short names for the common attributes; others as a dotted OID.
fn attribute_name(oid: &[u8]) -> String {
    const KNOWN: &[(&[u8], &str)] = &[
        (&[0x55, 0x04, 0x03], "CN"),
        (&[0x55, 0x04, 0x06], "C"),
        (&[0x55, 0x04, 0x07], "L"),
        (&[0x55, 0x04, 0x08], "ST"),
        (&[0x55, 0x04, 0x09], "street"),
        (&[0x55, 0x04, 0x0a], "O"),
        (&[0x55, 0x04, 0x0b], "OU"),
        (&[0x55, 0x04, 0x05], "serialNumber"),
        (
            &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
            "DC",
        ),
        (
            &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01],
            "UID",
        ),
        (
            &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
            "emailAddress",
        ),
    ];
    if let Some((_, name)) = KNOWN.iter().find(|(o, _)| *o == oid) {
        return name.to_string();
    }
    dotted(oid)
}

fn dotted(oid: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut value: u64 = 0;
    for (i, &b) in oid.iter().enumerate() {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = (value / 40).min(2);
                parts.push(first.to_string());
                parts.push((value - first * 40).to_string());
            } else {
                parts.push(value.to_string());
            }
            value = 0;
        }
        if i > 64 {
            break;
        }
    }
    parts.join(".")
}

/// RFC 2253 escaping of an attribute value.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == v.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_certificates_give_none() {
        assert_eq!(subject_dn(&[]), None);
        assert_eq!(subject_dn(&[0x30, 0x82, 0xff]), None);
        assert_eq!(subject_dn(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
        assert_eq!(subject_dn(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn values_are_escaped_and_oids_dotted() {
        assert_eq!(escape("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape("#x "), "\\#x\\ ");
        assert_eq!(
            dotted(&[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37]),
            "1.3.6.1.4.1.311"
        );
        assert_eq!(attribute_name(&[0x55, 0x04, 0x03]), "CN");
    }
}
