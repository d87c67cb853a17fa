//! TLS with rustls: mongod's `--tlsMode` (disabled, allowTLS, preferTLS, requireTLS), the
//! server's certificate and key, optional client-certificate verification against a CA, and
//! reloading the certificate files on SIGHUP.
//!
//! Invariants:
//! - With `requireTLS`, a connection that does not start a TLS handshake is closed before a
//!   single byte of it is read as a message.
//! - With `allowTLS`/`preferTLS`, a connection is TLS when its first bytes are a TLS handshake
//!   record (`0x16 0x03 0x00..=0x04`); a MongoDB message cannot start so while it is a
//!   handshake (its length would be over 64 KiB).
//! - The handshake is bounded by the handshake timeout, like a plaintext client's first
//!   message.
//! - A reload that fails (a missing or bad file) keeps the running configuration and says why:
//!   a typo never takes a running server off the network.
//!
//! Lock order: `Tls::current` is a leaf, held only to clone or swap an `Arc`.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// mongod's `--tlsMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Disabled,
    /// Plaintext and TLS; mongod itself would connect out in plaintext.
    Allow,
    /// Plaintext and TLS; mongod itself would connect out over TLS.
    Prefer,
    Require,
}

impl TlsMode {
    pub fn parse(s: &str) -> Option<TlsMode> {
        match s {
            "disabled" => Some(TlsMode::Disabled),
            "allowTLS" => Some(TlsMode::Allow),
            "preferTLS" => Some(TlsMode::Prefer),
            "requireTLS" => Some(TlsMode::Require),
            _ => None,
        }
    }
}

/// What `mangrove serve` was told about TLS.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub mode: TlsMode,
    /// PEM: the certificate chain and the private key, in one file as mongod takes them.
    pub certificate_key_file: Option<PathBuf>,
    /// PEM: the CAs that sign client certificates; client certificates are verified when
    /// given, and not required.
    pub ca_file: Option<PathBuf>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            mode: TlsMode::Disabled,
            certificate_key_file: None,
            ca_file: None,
        }
    }
}

/// The running TLS configuration (`None` when TLS is disabled).
pub struct Tls {
    settings: TlsSettings,
    current: RwLock<Option<TlsAcceptor>>,
}

impl Tls {
    /// Loads the files `settings` names; an error says which file and why.
    pub fn load(settings: TlsSettings) -> Result<Tls, String> {
        let acceptor = match settings.mode {
            TlsMode::Disabled => None,
            _ => Some(acceptor(&settings)?),
        };
        Ok(Tls {
            settings,
            current: RwLock::new(acceptor),
        })
    }

    pub fn mode(&self) -> TlsMode {
        self.settings.mode
    }

    /// Reads the certificate files again (SIGHUP); on failure the running configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        if self.settings.mode == TlsMode::Disabled {
            return Ok(());
        }
        let fresh = acceptor(&self.settings)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(fresh);
        Ok(())
    }

    fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The connection, as TLS or plaintext as the mode and its first bytes decide.
    pub async fn accept(&self, stream: TcpStream) -> Result<Stream, String> {
        let Some(acceptor) = self.acceptor() else {
            return Ok(Stream::Plain(stream));
        };
        let is_tls = starts_tls(&stream).await?;
        if !is_tls {
            if self.settings.mode == TlsMode::Require {
                return Err("a plaintext connection under --tls-mode requireTLS".into());
            }
            return Ok(Stream::Plain(stream));
        }
        let tls = acceptor
            .accept(stream)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// A connection's byte stream.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Whether the client's first bytes are a TLS handshake record, waiting for three of them.
async fn starts_tls(stream: &TcpStream) -> Result<bool, String> {
    let mut head = [0u8; 3];
    loop {
        let n = stream
            .peek(&mut head)
            .await
            .map_err(|e| format!("reading the first bytes: {e}"))?;
        if n == 0 {
            return Err("closed before sending anything".into());
        }
        if n >= 3 || head[0] != 0x16 {
            return Ok(n >= 3 && head[0] == 0x16 && head[1] == 0x03 && head[2] <= 0x04);
        }
        // A partial record header: wait for the rest.
        stream
            .readable()
            .await
            .map_err(|e| format!("reading the first bytes: {e}"))?;
    }
}

fn acceptor(settings: &TlsSettings) -> Result<TlsAcceptor, String> {
    let file = settings.certificate_key_file.as_deref().ok_or(
        "TLS needs --tls-certificate-key-file (a PEM file with the certificate chain and its private key)",
    )?;
    let certs = certificates(file)?;
    let key = PrivateKeyDer::from_pem_file(file)
        .map_err(|e| format!("{}: no usable private key ({e})", file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let builder = match &settings.ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: not a usable CA certificate ({e})", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{}: the certificate and key do not fit ({e})",
            file.display()
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let open = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = CertificateDer::pem_reader_iter(BufReader::new(open))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no certificate", path.display()));
    }
    Ok(certs)
}
