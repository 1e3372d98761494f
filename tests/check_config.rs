//! `regmirror check-config` says "valid" only when `serve` would start, and otherwise names the
//! key and the fix: unreadable files, a certificate and key that are not a pair, a bad
//! `ca_file`, URLs with a path or without a scheme, durations without a unit, signature keys
//! that are not PEM P-256 public keys and policies naming unknown upstreams. A lone upstream
//! is the default, and an operator's own Docker Hub upstream keeps Docker Hub's search.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestMirror;
use common::fake_upstream::{Auth, FakeUpstream};

fn regmirror(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check(dir: &Path, name: &str, text: &str) -> (i32, String, String) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    regmirror(&["check-config", "--config", path.to_str().unwrap()])
}

#[test]
fn check_config_refuses_what_serve_would_refuse_naming_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (crt, _) = common::test_certificate(d);
    let other = d.join("other");
    std::fs::create_dir(&other).unwrap();
    let (_, _) = common::test_certificate(&other);
    let not_pem = d.join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let cases = [
        (
            "[server]\ntls_cert = \"/nonexistent/tls.crt\"\ntls_key = \"/nonexistent/tls.key\"\n".to_owned(),
            vec!["tls_cert", "/nonexistent/tls.crt"],
        ),
        (
            format!(
                "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                crt.display(),
                other.join("tls.key").display()
            ),
            vec!["tls_cert and tls_key"],
        ),
        (
            "[auth]\nhtpasswd = \"/nonexistent/htpasswd\"\n".to_owned(),
            vec!["[auth] htpasswd", "/nonexistent/htpasswd"],
        ),
        (
            format!(
                "[[upstream]]\nname = \"corp.example\"\nurl = \"https://corp.example\"\nca_file = \"{}\"\n",
                not_pem.display()
            ),
            vec!["ca_file", "no certificate"],
        ),
        (
            "[[upstream]]\nname = \"corp.example\"\nurl = \"http://corp.example:5000/v2/\"\n".to_owned(),
            vec!["upstream[0].url", "without a path", "\"http://corp.example:5000\""],
        ),
        (
            "[[upstream]]\nname = \"docker.io\"\nurl = \"registry-1.docker.io\"\n".to_owned(),
            vec!["url", "add the scheme: \"https://registry-1.docker.io\""],
        ),
        (
            "[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\ntag_ttl = \"10\"\n".to_owned(),
            vec!["tag_ttl", "\"10m\""],
        ),
        (
            "[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\nusername = \"u\"\npassword_env = \"REGMIRROR_TEST_NEVER_SET\"\n".to_owned(),
            vec!["password_env", "REGMIRROR_TEST_NEVER_SET"],
        ),
        (
            format!(
                "[[signatures]]\nrepositories = [\"myorg/*\"]\nkeys = [\"{}\"]\n",
                not_pem.display()
            ),
            vec!["signatures[0].keys[0]", "not.pem", "ECDSA P-256"],
        ),
        (
            "[[signatures]]\nrepositories = [\"myorg/*\"]\nkeys = [\"/nonexistent/cosign.pub\"]\n".to_owned(),
            vec!["signatures[0].keys[0]", "/nonexistent/cosign.pub"],
        ),
        (
            "[[signatures]]\nupstream = \"quay.io\"\nrepositories = [\"myorg/*\"]\nkeys = [\"/k.pub\"]\n".to_owned(),
            vec!["signatures[0].upstream", "quay.io", "docker.io"],
        ),
        (
            "[[signatures]]\nrepositories = [\"/myorg/*\"]\nkeys = [\"/k.pub\"]\n".to_owned(),
            vec!["signatures[0].repositories[0]", "repository pattern"],
        ),
        (
            "[[signatures]]\nrepositories = [\"myorg/*\"]\nkeys = [\"/k.pub\"]\nmode = \"audit\"\n".to_owned(),
            vec!["mode", "enforce", "warn"],
        ),
        (
            "[storage]\nbackend = \"gcs\"\n".to_owned(),
            vec!["storage.gcs", "bucket"],
        ),
        (
            "[storage]\nbackend = \"gcs\"\n[storage.gcs]\nbucket = \"b\"\ncredentials_file = \"/nonexistent/gcs.json\"\n".to_owned(),
            vec!["credentials_file", "/nonexistent/gcs.json"],
        ),
        (
            format!(
                "[storage]\nbackend = \"gcs\"\n[storage.gcs]\nbucket = \"b\"\ncredentials_file = \"{}\"\n",
                not_pem.display()
            ),
            vec!["credentials_file", "not a service-account JSON key"],
        ),
        (
            "[storage]\nbackend = \"azure\"\n[storage.azure]\naccount = \"a\"\ncontainer = \"c\"\nendpoint = \"a.blob.core.windows.net\"\n".to_owned(),
            vec!["storage.azure.endpoint", "blob URL"],
        ),
        (
            "[storage]\nbackend = \"azure\"\n[storage.azure]\naccount = \"a\"\ncontainer = \"c\"\naccess_key_env = \"REGMIRROR_TEST_NEVER_SET\"\n".to_owned(),
            vec!["access_key_env", "REGMIRROR_TEST_NEVER_SET"],
        ),
        (
            "[storage]\nbackend = \"azure\"\n[storage.azure]\naccount = \"a\"\ncontainer = \"c\"\nredirect = true\n".to_owned(),
            vec!["storage.azure.redirect", "access_key"],
        ),
    ];
    for (i, (text, wanted)) in cases.iter().enumerate() {
        let (code, out, err) = check(d, &format!("case{i}.toml"), text);
        assert_ne!(code, 0, "accepted:\n{text}\n{out}");
        assert!(!out.contains("is valid"), "{out}");
        for w in wanted {
            assert!(err.contains(w), "case {i}: {w:?} not in: {err}");
        }
    }

    // serve refuses the same file with the same words, before listening.
    let path = d.join("case0.toml");
    let (code, _, err) = regmirror(&["serve", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("tls_cert") && err.contains("/nonexistent/tls.crt"),
        "{err}"
    );
}

#[tokio::test]
async fn a_lone_upstream_is_the_default_and_docker_hub_keeps_its_search() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = check(
        dir.path(),
        "hub.toml",
        "[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\nusername = \"me\"\npassword = \"secret\"\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("search_url = \"https://index.docker.io/\""),
        "{out}"
    );
    assert!(out.contains("default = true"), "{out}");

    // Served as it says: plain names go to the lone upstream.
    let fake = FakeUpstream::start(Auth::None).await;
    let digest = fake.put_blob(common::random_bytes(100));
    let m = TestMirror::start(&format!(
        "[[upstream]]\nname = \"corp.example\"\nurl = \"{}\"\n",
        fake.url()
    ))
    .await;
    assert_eq!(
        m.get(&format!("/v2/team/app/blobs/{digest}"))
            .await
            .status(),
        200
    );
    assert_eq!(fake.count("GET", "/blobs/"), 1);
}
