//! The README tells the truth to the person who runs regmirror: it is short enough to read,
//! every configuration it shows is one regmirror accepts, every command it lists exists, and
//! every page it links to is there.

use std::path::Path;
use std::process::Command;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The fenced blocks of `language` in `text`.
fn blocks<'a>(text: &'a str, language: &str) -> Vec<&'a str> {
    let fence = format!("```{language}\n");
    text.split(&fence)
        .skip(1)
        .filter_map(|rest| rest.split("\n```").next())
        .collect()
}

#[test]
fn the_readme_is_short_and_starts_with_the_quick_start() {
    let text = readme();
    assert!(
        text.lines().count() <= 250,
        "{} lines",
        text.lines().count()
    );
    let quick_start = text.find("## Quick start").expect("a quick start");
    assert!(
        text[..quick_start].lines().count() < 25,
        "the quick start is on the first screen"
    );
    for needed in [
        "deploy/image/build",
        "docker run",
        "/ui/",
        "docs/kubernetes.md",
    ] {
        assert!(
            text.contains(needed),
            "the README does not mention {needed}"
        );
    }
}

#[test]
fn every_config_in_the_readme_is_accepted() {
    let text = readme();
    let configs: Vec<&str> = blocks(&text, "toml")
        .into_iter()
        .filter(|b| {
            ["[[upstream]]", "[server]", "[storage]", "[auth]"]
                .iter()
                .any(|t| b.contains(t))
        })
        .collect();
    assert!(configs.len() >= 4, "the common cases: {configs:?}");
    for config in configs {
        if let Err(e) = regmirror::config::Config::parse(config, "README.md") {
            panic!("README config refused: {e}\n{config}");
        }
    }
}

#[test]
fn every_command_and_link_in_the_readme_exists() {
    let text = readme();
    let help = Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    for line in text.lines().filter(|l| l.starts_with("| `regmirror ")) {
        let command = line["| `regmirror ".len()..]
            .split([' ', '`'])
            .next()
            .unwrap();
        assert!(
            help.contains(&format!("  {command} ")),
            "no `regmirror {command}`:\n{help}"
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut rest = text.as_str();
    let mut links = 0;
    while let Some(i) = rest.find("](") {
        let target: String = rest[i + 2..].chars().take_while(|c| *c != ')').collect();
        rest = &rest[i + 2..];
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        let path = target.split('#').next().unwrap();
        assert!(
            root.join(path).exists(),
            "the README links to {target}, which is missing"
        );
        links += 1;
    }
    assert!(links >= 8, "{links} links");
}
