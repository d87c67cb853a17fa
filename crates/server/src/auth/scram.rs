//! SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677) as mongod speaks them: the keys a user's
//! credentials keep, and the server's side of one conversation.
//!
//! Invariants:
//! - Only the salted keys are kept (StoredKey and ServerKey, with the salt and iteration
//!   count): never the password, nor SaltedPassword, from which ClientKey follows.
//! - A proof is compared in constant time; every way a conversation can fail (unknown user,
//!   wrong proof, a nonce that is not ours, a malformed message) looks the same to the client:
//!   AuthenticationFailed, so the reply does not say which users exist.
//! - Every message is bounded ([`MAX_MESSAGE`]) before it is parsed.
//!
//! mongod's SCRAM-SHA-1 hashes `user:mongo:password` with MD5 first (its legacy "password
//! digest") and uses that as the password; SCRAM-SHA-256 uses the SASLprepped password itself.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit, Mac};
use rand::RngCore;
use sha2::Digest;
use subtle::ConstantTimeEq;

/// The longest SCRAM message accepted (real ones are under 300 bytes).
pub const MAX_MESSAGE: usize = 4096;

/// A SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Sha1,
    Sha256,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sha1 => "SCRAM-SHA-1",
            Mechanism::Sha256 => "SCRAM-SHA-256",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        match name {
            "SCRAM-SHA-1" => Some(Mechanism::Sha1),
            "SCRAM-SHA-256" => Some(Mechanism::Sha256),
            _ => None,
        }
    }

    /// Salt bytes, as mongod generates them.
    fn salt_len(self) -> usize {
        match self {
            Mechanism::Sha1 => 16,
            Mechanism::Sha256 => 28,
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Mechanism::Sha256 => sha2::Sha256::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        fn run<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            // HMAC takes keys of any length.
            let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Mechanism::Sha1 => run::<hmac::Hmac<sha1::Sha1>>(key, data),
            Mechanism::Sha256 => run::<hmac::Hmac<sha2::Sha256>>(key, data),
        }
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Mechanism::Sha1 => {
                pbkdf2::pbkdf2_hmac_array::<sha1::Sha1, 20>(password, salt, iterations).to_vec()
            }
            Mechanism::Sha256 => {
                pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, 32>(password, salt, iterations).to_vec()
            }
        }
    }
}

/// The password a mechanism salts: SCRAM-SHA-1's MD5 digest of `user:mongo:password`, or
/// SCRAM-SHA-256's SASLprepped password (`None`: the password has prohibited characters).
pub fn mechanism_password(mechanism: Mechanism, user: &str, password: &str) -> Option<Vec<u8>> {
    match mechanism {
        Mechanism::Sha1 => {
            let digest = md5::Md5::digest(format!("{user}:mongo:{password}").as_bytes());
            Some(hex(&digest).into_bytes())
        }
        Mechanism::Sha256 => stringprep::saslprep(password)
            .ok()
            .map(|p| p.as_bytes().to_vec()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a user's credentials keep for one mechanism.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl Credential {
    /// New keys from a password, with a fresh random salt.
    pub fn derive(mechanism: Mechanism, password: &[u8], iterations: u32) -> Credential {
        let mut salt = vec![0u8; mechanism.salt_len()];
        rand::rng().fill_bytes(&mut salt);
        Credential::derive_with_salt(mechanism, password, salt, iterations)
    }

    fn derive_with_salt(
        mechanism: Mechanism,
        password: &[u8],
        salt: Vec<u8>,
        iterations: u32,
    ) -> Credential {
        let salted = mechanism.salted_password(password, &salt, iterations);
        let client_key = mechanism.hmac(&salted, b"Client Key");
        Credential {
            iterations,
            stored_key: mechanism.hash(&client_key),
            server_key: mechanism.hmac(&salted, b"Server Key"),
            salt,
        }
    }

    /// As mongod keeps it in `admin.system.users`: base64 strings.
    pub fn to_document(&self) -> bson::Document {
        bson::doc! {
            "iterationCount": self.iterations as i32,
            "salt": BASE64.encode(&self.salt),
            "storedKey": BASE64.encode(&self.stored_key),
            "serverKey": BASE64.encode(&self.server_key),
        }
    }

    pub fn from_document(d: &bson::Document) -> Option<Credential> {
        let decode = |field: &str| BASE64.decode(d.get_str(field).ok()?).ok();
        Some(Credential {
            iterations: u32::try_from(d.get_i32("iterationCount").ok()?).ok()?,
            salt: decode("salt")?,
            stored_key: decode("storedKey")?,
            server_key: decode("serverKey")?,
        })
    }
}

/// Why a conversation failed. Each becomes AuthenticationFailed for the client; the variant is
/// for the server's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramError {
    Malformed(&'static str),
    UnknownUser,
    WrongNonce,
    WrongProof,
}

impl std::fmt::Display for ScramError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScramError::Malformed(what) => write!(f, "malformed SCRAM message: {what}"),
            ScramError::UnknownUser => write!(f, "no such user"),
            ScramError::WrongNonce => write!(f, "the client's nonce does not continue ours"),
            ScramError::WrongProof => write!(f, "wrong password (client proof does not verify)"),
        }
    }
}

/// The client's first message: `n,,n=<user>,r=<nonce>`.
pub struct ClientFirst {
    pub user: String,
    nonce: String,
    /// The message without its GS2 header, which the signatures cover.
    bare: String,
}

pub fn parse_client_first(payload: &[u8]) -> Result<ClientFirst, ScramError> {
    let text = message_text(payload)?;
    // No channel binding: mongod accepts only "n" (and "y", client supports but did not use it).
    let bare = text
        .strip_prefix("n,,")
        .or_else(|| text.strip_prefix("y,,"))
        .ok_or(ScramError::Malformed("the GS2 header must be 'n,,'"))?;
    let mut user = None;
    let mut nonce = None;
    for attr in bare.split(',') {
        match attr.split_once('=') {
            Some(("n", v)) => user = Some(unescape_name(v)?),
            Some(("r", v)) => nonce = Some(v.to_string()),
            Some(("m", _)) => return Err(ScramError::Malformed("extensions are not supported")),
            _ => {}
        }
    }
    let user = user.ok_or(ScramError::Malformed("no user name"))?;
    let nonce = nonce
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b','))
        .ok_or(ScramError::Malformed("no nonce"))?;
    Ok(ClientFirst {
        user,
        nonce,
        bare: bare.to_string(),
    })
}

fn message_text(payload: &[u8]) -> Result<&str, ScramError> {
    if payload.len() > MAX_MESSAGE {
        return Err(ScramError::Malformed("message too long"));
    }
    std::str::from_utf8(payload).map_err(|_| ScramError::Malformed("not UTF-8"))
}

/// `=2C` is ',' and `=3D` is '='; any other '=' is an error (RFC 5802 §5.1).
fn unescape_name(v: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let code = rest.get(at..at + 3);
        match code {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in the user name")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A conversation after the server's first message, waiting for the client's proof.
pub struct Conversation {
    pub mechanism: Mechanism,
    pub user: String,
    credential: Credential,
    nonce: String,
    auth_prefix: String,
}

impl Conversation {
    /// Answers `first` for a user with `credential`: the server's first message.
    pub fn start(
        mechanism: Mechanism,
        first: ClientFirst,
        credential: Credential,
    ) -> (Conversation, Vec<u8>) {
        let mut ours = [0u8; 24];
        rand::rng().fill_bytes(&mut ours);
        let nonce = format!("{}{}", first.nonce, BASE64.encode(ours));
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&credential.salt),
            credential.iterations
        );
        let auth_prefix = format!("{},{server_first}", first.bare);
        let conversation = Conversation {
            mechanism,
            user: first.user,
            credential,
            nonce,
            auth_prefix,
        };
        (conversation, server_first.into_bytes())
    }

    /// Checks the client's final message (`c=...,r=...,p=...`); on success, the server's
    /// final message (`v=<signature>`).
    pub fn finish(&self, payload: &[u8]) -> Result<Vec<u8>, ScramError> {
        let text = message_text(payload)?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut nonce = None;
        let mut binding = None;
        for attr in without_proof.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("c", v)) => binding = Some(v),
                _ => {}
            }
        }
        // "biws" is base64 of "n,,": no channel binding, no authorization identity.
        if !matches!(binding, Some("biws") | Some("eSws")) {
            return Err(ScramError::Malformed("channel binding must be 'biws'"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::WrongNonce);
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let m = self.mechanism;
        let auth_message = format!("{},{without_proof}", self.auth_prefix);
        let client_signature = m.hmac(&self.credential.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(ScramError::WrongProof);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        if !bool::from(m.hash(&client_key).ct_eq(&self.credential.stored_key)) {
            return Err(ScramError::WrongProof);
        }
        let server_signature = m.hmac(&self.credential.server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's SCRAM-SHA-256 example, end to end (with its fixed nonces and salt).
    #[test]
    fn rfc7677_example() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let password = mechanism_password(Mechanism::Sha256, "user", "pencil").unwrap();
        let credential = Credential::derive_with_salt(Mechanism::Sha256, &password, salt, 4096);
        let first = parse_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(first.user, "user");
        let conversation = Conversation {
            mechanism: Mechanism::Sha256,
            user: first.user.clone(),
            credential,
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            auth_prefix: format!(
                "{},r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
                first.bare
            ),
        };
        let last = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let server_final = conversation.finish(last).unwrap();
        assert_eq!(
            String::from_utf8(server_final).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let mut wrong = last.to_vec();
        let at = wrong.len() - 5;
        wrong[at] ^= 1;
        assert!(conversation.finish(&wrong).is_err());
    }

    /// RFC 5802's SCRAM-SHA-1 example (the plain password, not mongod's digest).
    #[test]
    fn rfc5802_example() {
        let salt = BASE64.decode("QSXCR+Q6sek8bf92").unwrap();
        let credential = Credential::derive_with_salt(Mechanism::Sha1, b"pencil", salt, 4096);
        let first = parse_client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL").unwrap();
        let nonce = "fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j";
        let conversation = Conversation {
            mechanism: Mechanism::Sha1,
            user: first.user.clone(),
            credential,
            nonce: nonce.into(),
            auth_prefix: format!("{},r={nonce},s=QSXCR+Q6sek8bf92,i=4096", first.bare),
        };
        let last = format!("c=biws,r={nonce},p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=");
        let server_final = conversation.finish(last.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(server_final).unwrap(),
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ="
        );
        let replayed_nonce = format!("c=biws,r={nonce}x,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=");
        assert_eq!(
            conversation.finish(replayed_nonce.as_bytes()),
            Err(ScramError::WrongNonce)
        );
    }

    #[test]
    fn client_first_is_checked() {
        assert!(parse_client_first(b"p=tls-unique,,n=a,r=x").is_err());
        assert!(parse_client_first(b"n,,n=a").is_err());
        assert!(parse_client_first(b"n,,n=a=2Cb=3Dc,r=abc").unwrap().user == "a,b=c");
        assert!(parse_client_first(b"n,,n=a=zz,r=abc").is_err());
        assert!(parse_client_first(&[b'n'; MAX_MESSAGE + 1]).is_err());
        assert!(parse_client_first(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn sha1_password_is_mongods_digest() {
        // mongod's digest of "user:mongo:pencil".
        let digest = mechanism_password(Mechanism::Sha1, "user", "pencil").unwrap();
        assert_eq!(digest.len(), 32);
        assert_eq!(
            String::from_utf8(digest).unwrap(),
            hex(&md5::Md5::digest(b"user:mongo:pencil"))
        );
        // SASLprep refuses prohibited characters.
        assert!(mechanism_password(Mechanism::Sha256, "u", "a\u{7}b").is_none());
    }
}
