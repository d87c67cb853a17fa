//! TLS through the Rust driver against a real server, with a test CA made at test time by
//! `openssl`: requireTLS refuses plaintext and serves TLS (with SCRAM over it), preferTLS
//! serves both, a client that trusts another CA fails, client certificates are verified
//! against `--tls-ca-file`, SIGHUP swaps in a renewed certificate, and a missing certificate
//! file stops start-up with its name.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{Server, start_refused};
use bson::{Document, doc};
use mongodb::Client;
use mongodb::options::{AuthMechanism, ClientOptions, Credential, Tls, TlsOptions};

/// A CA and certificates it signs, made with `openssl` in a fresh directory.
struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (Debian package 'openssl')");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("mangrove-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj"]);
        let subject = format!("/CN=Mangrove test CA {name}");
        ca.push(&subject);
        openssl(&dir, &ca);
        let pki = Pki { dir };
        pki.issue("server", "subjectAltName=IP:127.0.0.1,DNS:localhost");
        pki.issue("client", "extendedKeyUsage=clientAuth");
        pki
    }

    /// `<name>.pem`: a certificate signed by this CA, followed by its key.
    fn issue(&self, name: &str, extension: &str) {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let subject = format!("/CN={name}");
        let mut req = vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ];
        req.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(&self.dir, &req);
        let ext_file = format!("{name}.ext");
        std::fs::write(self.dir.join(&ext_file), format!("{extension}\n")).unwrap();
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext_file,
            ],
        );
        let pem = [
            std::fs::read(self.dir.join(&crt)).unwrap(),
            std::fs::read(self.dir.join(&key)).unwrap(),
        ]
        .concat();
        std::fs::write(self.dir.join(format!("{name}.pem")), pem).unwrap();
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn client(
    port: u16,
    ca: Option<&str>,
    cert: Option<&str>,
    user: Option<(&str, &str)>,
) -> Client {
    let mut options = ClientOptions::parse(format!("mongodb://127.0.0.1:{port}/"))
        .await
        .unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(2));
    options.connect_timeout = Some(Duration::from_secs(2));
    if let Some(ca) = ca {
        let mut tls = TlsOptions::builder()
            .ca_file_path(PathBuf::from(ca))
            .build();
        tls.cert_key_file_path = cert.map(PathBuf::from);
        options.tls = Some(Tls::Enabled(tls));
    }
    if let Some((user, pwd)) = user {
        options.credential = Some(
            Credential::builder()
                .username(user.to_string())
                .password(pwd.to_string())
                .source("admin".to_string())
                .mechanism(AuthMechanism::ScramSha256)
                .build(),
        );
    }
    Client::with_options(options).unwrap()
}

async fn ping(client: &Client) -> Result<Document, String> {
    client
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_with_auth() {
    let pki = Pki::new("require");
    let cert = pki.path("server.pem");
    let server = Server::start_with(&[
        "--tls-mode",
        "requireTLS",
        "--tls-certificate-key-file",
        &cert,
        "--auth",
    ]);
    let ca = pki.path("ca.pem");
    let anon = client(server.port, Some(&ca), None, None).await;
    ping(&anon).await.unwrap();
    anon.database("admin")
        .run_command(doc! {"createUser": "u", "pwd": "pw", "roles": ["root"]})
        .await
        .unwrap();
    let user = client(server.port, Some(&ca), None, Some(("u", "pw"))).await;
    user.database("t")
        .collection::<Document>("c")
        .insert_one(doc! {"over": "tls"})
        .await
        .unwrap();
    let wrong_password = client(server.port, Some(&ca), None, Some(("u", "no"))).await;
    assert!(
        ping(&wrong_password)
            .await
            .unwrap_err()
            .contains("uthentication")
    );

    let plaintext = client(server.port, None, None, None).await;
    let e = ping(&plaintext).await.unwrap_err();
    assert!(!e.is_empty());
    let other = Pki::new("other");
    let untrusting = client(server.port, Some(&other.path("ca.pem")), None, None).await;
    assert!(ping(&untrusting).await.is_err());
    // The server is still fine after the refused clients.
    ping(&anon).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_tls_serves_both_and_checks_client_certificates() {
    let pki = Pki::new("prefer");
    let stranger = Pki::new("stranger");
    let cert = pki.path("server.pem");
    let ca = pki.path("ca.pem");
    let server = Server::start_with(&[
        "--tls-mode",
        "preferTLS",
        "--tls-certificate-key-file",
        &cert,
        "--tls-ca-file",
        &ca,
    ]);
    ping(&client(server.port, None, None, None).await)
        .await
        .unwrap();
    ping(&client(server.port, Some(&ca), None, None).await)
        .await
        .unwrap();
    let signed = client(server.port, Some(&ca), Some(&pki.path("client.pem")), None).await;
    ping(&signed).await.unwrap();
    let forged = client(
        server.port,
        Some(&ca),
        Some(&stranger.path("client.pem")),
        None,
    )
    .await;
    assert!(ping(&forged).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    let first = Pki::new("first");
    let second = Pki::new("second");
    let live = first.dir.join("live.pem");
    std::fs::copy(first.path("server.pem"), &live).unwrap();
    let live_path = live.to_string_lossy().into_owned();
    let server = Server::start_with(&[
        "--tls-mode",
        "requireTLS",
        "--tls-certificate-key-file",
        &live_path,
    ]);
    ping(&client(server.port, Some(&first.path("ca.pem")), None, None).await)
        .await
        .unwrap();
    // A broken file is refused and the running certificate kept.
    std::fs::write(&live, "not a certificate").unwrap();
    hangup(&server);
    ping(&client(server.port, Some(&first.path("ca.pem")), None, None).await)
        .await
        .unwrap();
    std::fs::copy(second.path("server.pem"), &live).unwrap();
    hangup(&server);
    ping(&client(server.port, Some(&second.path("ca.pem")), None, None).await)
        .await
        .unwrap();
    let stale = client(server.port, Some(&first.path("ca.pem")), None, None).await;
    assert!(ping(&stale).await.is_err());
    assert!(
        server
            .log_tail(200)
            .contains("kept the running TLS certificate")
    );
}

/// Sends SIGHUP and waits until the server logged handling it.
fn hangup(server: &Server) {
    let before = server.log_tail(10_000).matches("SIGHUP").count();
    Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    for _ in 0..200 {
        if server.log_tail(10_000).matches("SIGHUP").count() > before {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the server did not log the SIGHUP");
}

#[test]
fn a_missing_certificate_stops_start_up() {
    let dir = std::env::temp_dir().join(format!("mangrove-tls-missing-{}", std::process::id()));
    let missing = dir.join("nope.pem");
    let missing = missing.to_string_lossy();
    let (status, stderr) = start_refused(
        &dir.join("data"),
        &[
            "--tls-mode",
            "requireTLS",
            "--tls-certificate-key-file",
            &missing,
        ],
    );
    assert!(!status.success());
    assert!(stderr.contains("nope.pem"), "{stderr}");
    let (status, stderr) = start_refused(&dir.join("data"), &["--tls-mode", "requireTLS"]);
    assert!(!status.success());
    assert!(stderr.contains("--tls-certificate-key-file"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// MONGODB-X509: the verified client certificate's subject is the user, on `$external`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_authentication() {
    let pki = Pki::new("x509");
    pki.issue("other", "extendedKeyUsage=clientAuth");
    let (cert, ca) = (pki.path("server.pem"), pki.path("ca.pem"));
    let server = Server::start_with(&[
        "--tls-mode",
        "requireTLS",
        "--tls-certificate-key-file",
        &cert,
        "--tls-ca-file",
        &ca,
        "--auth",
    ]);
    let anon = client(server.port, Some(&ca), None, None).await;
    anon.database("$external")
        .run_command(doc! {"createUser": "CN=client", "roles": [{"role": "readWriteAnyDatabase", "db": "admin"}]})
        .await
        .unwrap();
    let port = server.port;
    let ca_path = &ca;
    let x509 = |pem: String| async move {
        let mut options = ClientOptions::parse(format!("mongodb://127.0.0.1:{port}/"))
            .await
            .unwrap();
        options.server_selection_timeout = Some(Duration::from_secs(2));
        let mut tls = TlsOptions::builder()
            .ca_file_path(PathBuf::from(ca_path))
            .build();
        tls.cert_key_file_path = Some(PathBuf::from(pem));
        options.tls = Some(Tls::Enabled(tls));
        options.credential = Some(
            Credential::builder()
                .mechanism(AuthMechanism::MongoDbX509)
                .source("$external".to_string())
                .build(),
        );
        Client::with_options(options).unwrap()
    };
    let user = x509(pki.path("client.pem")).await;
    user.database("t")
        .collection::<Document>("c")
        .insert_one(doc! {"by": "certificate"})
        .await
        .unwrap();
    let status = user
        .database("admin")
        .run_command(doc! {"connectionStatus": 1})
        .await
        .unwrap();
    let users = status
        .get_document("authInfo")
        .unwrap()
        .get_array("authenticatedUsers")
        .unwrap();
    assert_eq!(
        users[0].as_document().unwrap(),
        &doc! {"user": "CN=client", "db": "$external"}
    );
    // A certificate of the same CA naming another subject has no user.
    let other = x509(pki.path("other.pem")).await;
    let e = other
        .database("t")
        .run_command(doc! {"ping": 1})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("uthentication"), "{e}");
    // No certificate, no X.509 user.
    let plain = anon
        .database("$external")
        .run_command(doc! {"authenticate": 1, "mechanism": "MONGODB-X509"})
        .await
        .unwrap_err();
    assert!(plain.to_string().contains("No verified subject"), "{plain}");
}
