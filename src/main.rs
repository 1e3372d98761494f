//! The `regmirror` command.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use regmirror::config::{Config, LogFormat};
use regmirror::images::{self, Platform};
use regmirror::log_format::{PlainFields, UtcMicros};
use regmirror::log_writer::{LogWriter, LogWriterGuard};
use regmirror::oci::image_ref::ImageRef;
use regmirror::units::HumanBytes;

/// A pull-through caching mirror for container registries.
#[derive(Parser)]
#[command(name = "regmirror", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the mirror (Docker Hub on 0.0.0.0:5000, cache in ./data, when no config is given).
    Serve {
        /// Config file (see mirror.toml for every key and its default).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address; overrides `[server] listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Never contact any upstream: serve only what is cached (`[server] offline = true`).
        #[arg(long)]
        offline: bool,
    },
    /// Remove blobs no stored manifest references, dangling tags, expired uploads and leftover
    /// temp files (sparing anything younger than gc_grace). Safe beside a running server.
    Gc {
        /// Config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write an OCI image-layout tar of images (all platforms), from the cache or fetched
    /// through it, to carry into an air-gapped site.
    Export {
        /// Config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The tar to write.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Images: `[host/]repo[:tag|@digest]`.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Load an OCI image-layout tar (every blob verified) as pushed content.
    Import {
        /// Config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The tar to read.
        bundle: PathBuf,
    },
    /// Warm the cache with images.
    Prefetch {
        /// Config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only this platform of multi-platform images (`linux/amd64`); default: all.
        #[arg(long)]
        platform: Option<String>,
        /// A file with one image per line (`#` comments allowed).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Images: `[host/]repo[:tag|@digest]`.
        images: Vec<String>,
    },
    /// Check a config file and print the effective settings as TOML (passwords hidden).
    CheckConfig {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Exit 0 when the server on this machine answers `/healthz` (the container image's
    /// HEALTHCHECK; with TLS configured, an accepted connection is enough).
    Healthcheck {
        /// Config file (its `[server] listen` port is the one checked).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Manage the users of an htpasswd file (bcrypt), without apache2-utils.
    Htpasswd {
        #[command(subcommand)]
        action: HtpasswdAction,
    },
}

#[derive(Subcommand)]
enum HtpasswdAction {
    /// Add USER, or change their password. The password is asked for on the terminal, or read
    /// from the first line of stdin with `--stdin`.
    Add {
        /// The htpasswd file (created when missing).
        #[arg(long, short, default_value = "htpasswd")]
        file: PathBuf,
        /// Read the password from stdin instead of prompting.
        #[arg(long)]
        stdin: bool,
        /// bcrypt cost (10 to 14 are sensible: each step doubles the time a login takes).
        #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(4..=31))]
        cost: u32,
        /// The user name.
        user: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Needs no config, and prompts: before anything logs.
    if let Command::Htpasswd { action } = cli.command {
        return htpasswd(action);
    }
    let config_path = match &cli.command {
        Command::Serve { config, .. }
        | Command::Gc { config, .. }
        | Command::Export { config, .. }
        | Command::Import { config, .. }
        | Command::Prefetch { config, .. } => config.clone(),
        Command::CheckConfig { config } => Some(config.clone()),
        Command::Healthcheck { config } => config.clone(),
        Command::Htpasswd { .. } => None,
    };
    let mut config = match load(config_path.as_deref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Declared before the runtime, so dropped after it: what it logs while stopping is written.
    let _log_writer = match init_logging(config.log.format) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("regmirror: cannot start the log's writer thread: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("regmirror: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve {
            listen, offline, ..
        } => {
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            config.server.offline |= offline;
            runtime.block_on(serve(config))
        }
        Command::Gc { dry_run, .. } => runtime.block_on(gc(config, dry_run)),
        Command::Export { output, images, .. } => {
            runtime.block_on(export(config, &images, &output))
        }
        Command::Import { bundle, .. } => runtime.block_on(import(config, &bundle)),
        Command::Prefetch {
            platform,
            file,
            images,
            ..
        } => runtime.block_on(prefetch(
            config,
            platform.as_deref(),
            file.as_deref(),
            images,
        )),
        Command::CheckConfig { config: path } => runtime.block_on(check_config(&config, &path)),
        Command::Healthcheck { .. } => healthcheck(&config),
        Command::Htpasswd { .. } => ExitCode::SUCCESS,
    }
}

/// `regmirror check-config`: what `serve` would refuse, refused here too; then the effective
/// settings.
async fn check_config(config: &Config, path: &Path) -> ExitCode {
    if let Err(e) = regmirror::check(config).await {
        eprintln!("regmirror: {}: {e}", path.display());
        return ExitCode::from(2);
    }
    let text = match config.to_toml() {
        Ok(text) => text,
        Err(e) => return fail(e),
    };
    println!(
        "# {} is valid. The effective settings, defaults filled in, passwords hidden:\n\n{text}",
        path.display()
    );
    if !config.upstreams.iter().any(|u| u.default) {
        eprintln!(
            "note: no upstream is the default: a pull must name its upstream (containerd's ?ns=, or /v2/<upstream name>/...); set default = true on one to serve plain names"
        );
    }
    ExitCode::SUCCESS
}

/// `regmirror healthcheck`: `GET /healthz` on the loopback address of `[server] listen`.
fn healthcheck(config: &Config) -> ExitCode {
    use std::io::{Read, Write};
    use std::time::Duration;
    let listen = config.server.listen;
    let ip: std::net::IpAddr = if listen.ip().is_unspecified() {
        if listen.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        }
    } else {
        listen.ip()
    };
    let addr = SocketAddr::new(ip, listen.port());
    let timeout = Duration::from_secs(3);
    let mut stream = match std::net::TcpStream::connect_timeout(&addr, timeout) {
        Ok(stream) => stream,
        Err(e) => return fail(format!("healthcheck: cannot connect to {addr}: {e}")),
    };
    if config.server.tls_cert.is_some() {
        // Speaking TLS here would need a client and the server's trust: the listener accepting
        // is what this probe can say.
        return ExitCode::SUCCESS;
    }
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let request = format!("GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut answer = Vec::new();
    let sent = stream.write_all(request.as_bytes());
    let read = sent.and_then(|()| stream.take(4096).read_to_end(&mut answer));
    match read {
        Ok(_) if answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200") => {
            ExitCode::SUCCESS
        }
        Ok(_) => fail(format!(
            "healthcheck: {addr} answered {}",
            String::from_utf8_lossy(answer.split(|b| *b == b'\r').next().unwrap_or_default())
        )),
        Err(e) => fail(format!("healthcheck: {addr}: {e}")),
    }
}

/// `regmirror htpasswd add`.
fn htpasswd(action: HtpasswdAction) -> ExitCode {
    let HtpasswdAction::Add {
        file,
        stdin,
        cost,
        user,
    } = action;
    let password = if stdin {
        let mut line = String::new();
        match std::io::stdin().read_line(&mut line) {
            Ok(_) => line.trim_end_matches(['\r', '\n']).to_owned(),
            Err(e) => return fail(format!("reading the password from stdin: {e}")),
        }
    } else {
        let first = rpassword::prompt_password(format!("password for {user}: "));
        let again = first
            .as_ref()
            .ok()
            .map(|_| rpassword::prompt_password("again: "));
        match (first, again) {
            (Ok(a), Some(Ok(b))) if a == b => a,
            (Ok(_), Some(Ok(_))) => return fail("the passwords differ"),
            (Err(e), _) | (_, Some(Err(e))) => return fail(format!("reading the password: {e}")),
            (Ok(_), None) => return fail("reading the password"),
        }
    };
    let existing = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return fail(format!("{}: {e}", file.display())),
    };
    match regmirror::http::htpasswd::with_user(&existing, &user, &password, cost) {
        Ok(text) => match write_private(&file, &text) {
            Ok(()) => {
                eprintln!("{}: {user} set (bcrypt, cost {cost})", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("{}: {e}", file.display())),
        },
        Err(e) => fail(e),
    }
}

/// Writes `text` to `path` through a temp file and a rename, readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn load(path: Option<&Path>) -> Result<Config, ExitCode> {
    let loaded = match path {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    };
    loaded.map_err(|e| {
        eprintln!("regmirror: {e}");
        ExitCode::from(2)
    })
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("regmirror: {message}");
    ExitCode::FAILURE
}

fn parse_images(images: &[String]) -> Result<Vec<ImageRef>, ExitCode> {
    images
        .iter()
        .map(|i| i.parse::<ImageRef>())
        .collect::<Result<_, _>>()
        .map_err(fail)
}

async fn serve(config: Config) -> ExitCode {
    let server = match regmirror::start(&config).await {
        Ok(server) => server,
        Err(e) => return fail(e),
    };
    let upstreams: Vec<String> = config
        .upstreams
        .iter()
        .map(|u| {
            format!(
                "{}={}{}",
                u.name,
                u.url,
                if u.default { " (default)" } else { "" }
            )
        })
        .collect();
    tracing::info!(
        addr = %server.addr,
        tls = config.server.tls_cert.is_some(),
        storage = %config.storage.path.display(),
        upstreams = ?upstreams,
        offline = config.server.offline,
        "regmirror listening"
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.stop().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn gc(config: Config, dry_run: bool) -> ExitCode {
    let mirror = match regmirror::build_mirror_for_command(&config).await {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let storage = &config.storage;
    match mirror
        .store
        // A server beside this command may be filling: its spools are young, and gc_grace
        // spares young files.
        .gc(storage.gc_grace, storage.upload_ttl, dry_run, |_| false)
        .await
    {
        Ok(report) => {
            let verb = if dry_run { "would remove" } else { "removed" };
            println!("{verb}: {report}");
            let (bytes, blobs) = mirror.store.usage();
            println!("store now: {blobs} blobs, {}", HumanBytes(bytes));
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn export(config: Config, images: &[String], output: &Path) -> ExitCode {
    let images = match parse_images(images) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let mirror = match regmirror::build_mirror_for_command(&config).await {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    match images::export(&mirror, &images, output).await {
        Ok(blobs) => {
            println!(
                "wrote {} ({} images, {blobs} blobs)",
                output.display(),
                images.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn import(config: Config, bundle: &Path) -> ExitCode {
    let mirror = match regmirror::build_mirror_for_command(&config).await {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    match images::import(&mirror, bundle).await {
        Ok(imported) => {
            println!("imported {} blobs (digests verified)", imported.blobs);
            for image in &imported.images {
                println!("  {image}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn prefetch(
    config: Config,
    platform: Option<&str>,
    file: Option<&Path>,
    mut images: Vec<String>,
) -> ExitCode {
    if let Some(file) = file {
        match std::fs::read_to_string(file) {
            Ok(text) => images.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            ),
            Err(e) => return fail(format!("{}: {e}", file.display())),
        }
    }
    if images.is_empty() {
        return fail("no images given (IMAGE... or --file)");
    }
    let platform = match platform.map(str::parse::<Platform>).transpose() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let images = match parse_images(&images) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let mirror = match regmirror::build_mirror_for_command(&config).await {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let progress = Arc::new(LayerProgress::new());
    let (mut layers, mut fetched_bytes, mut cached_bytes) = (0, 0u64, 0u64);
    let mut failed: Vec<(String, String)> = Vec::new();
    for image in &images {
        progress.start_image(&image.to_string());
        let report = {
            let progress = Arc::clone(&progress);
            images::walk(&mirror, image, platform.as_ref(), &move |d, seen, total| {
                progress.update(d, seen, total)
            })
            .await
        };
        progress.finish_all();
        match report {
            Ok(walked) => {
                let mut size = 0;
                for blob in &walked.blobs {
                    layers += 1;
                    size += blob.size;
                    if blob.fetched {
                        fetched_bytes += blob.size;
                    } else {
                        cached_bytes += blob.size;
                    }
                }
                progress.println(&format!(
                    "{image}: {} manifests, {} blobs, {}",
                    walked.manifests.len(),
                    walked.blobs.len(),
                    HumanBytes(size)
                ));
            }
            Err(e) => {
                progress.eprintln(&format!("regmirror: {image}: {e}"));
                failed.push((image.to_string(), e.to_string()));
            }
        }
    }
    println!(
        "prefetched {} of {} images: {layers} blobs, {} fetched, {} already cached",
        images.len() - failed.len(),
        images.len(),
        HumanBytes(fetched_bytes),
        HumanBytes(cached_bytes)
    );
    if failed.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!("failed ({}):", failed.len());
    for (image, error) in &failed {
        eprintln!("  {image}: {error}");
    }
    ExitCode::FAILURE
}

/// Progress of blob downloads: a bar per blob on a terminal (named by image and layer), a line
/// per finished blob otherwise. Lines printed through it go above the bars, so redraws never
/// erase them.
struct LayerProgress {
    multi: Option<indicatif::MultiProgress>,
    image: std::sync::Mutex<String>,
    bars: std::sync::Mutex<std::collections::HashMap<String, indicatif::ProgressBar>>,
}

impl LayerProgress {
    fn new() -> LayerProgress {
        LayerProgress {
            multi: std::io::stderr()
                .is_terminal()
                .then(indicatif::MultiProgress::new),
            image: Default::default(),
            bars: Default::default(),
        }
    }

    /// The image whose blobs the next updates are about.
    fn start_image(&self, image: &str) {
        *self.image.lock().unwrap_or_else(|p| p.into_inner()) = image.to_owned();
    }

    /// A line on stdout, above the bars.
    fn println(&self, line: &str) {
        match &self.multi {
            Some(multi) => multi.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    /// A line on stderr, above the bars.
    fn eprintln(&self, line: &str) {
        match &self.multi {
            Some(multi) => {
                if multi.println(line).is_err() {
                    eprintln!("{line}");
                }
            }
            None => eprintln!("{line}"),
        }
    }

    fn update(&self, digest: &regmirror::oci::Digest, seen: u64, total: Option<u64>) {
        let key = digest.to_string();
        let image = self.image.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let short = key.split_once(':').map_or(key.as_str(), |(_, hex)| hex);
        let name = format!("{image} {}", &short[..short.len().min(12)]);
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        match &self.multi {
            Some(multi) => {
                let bar = bars.entry(key.clone()).or_insert_with(|| {
                    let bar = multi.add(indicatif::ProgressBar::new(total.unwrap_or(0)));
                    if let Ok(style) = indicatif::ProgressStyle::with_template(
                        "{msg:40!} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
                    ) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar.set_message(name);
                    bar
                });
                bar.set_position(seen);
            }
            None => {
                if total == Some(seen) && !bars.contains_key(&key) {
                    bars.insert(key.clone(), indicatif::ProgressBar::hidden());
                    eprintln!("{image}: {key} {}", HumanBytes(seen));
                }
            }
        }
    }

    fn finish_all(&self) {
        for bar in self.bars.lock().unwrap_or_else(|p| p.into_inner()).values() {
            bar.finish();
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// Logs to stderr through [`LogWriter`]: each line is formatted where it is logged and added
/// to a shared buffer; one thread writes whatever has gathered in one `write(2)` (one per
/// request when idle, one per burst under load), so serving a request never waits on stderr's
/// lock or a system call. Nothing is dropped. The returned guard writes what is left when
/// dropped.
fn init_logging(format: LogFormat) -> std::io::Result<LogWriterGuard> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("REGMIRROR_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = LogWriter::spawn(Box::new(std::io::stderr()))?;
    // Colour codes only for a person at a terminal, never into files, pipes or log collectors.
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_timer(UtcMicros)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text if terminal => builder.init(),
        LogFormat::Text => builder.fmt_fields(PlainFields).init(),
    }
    Ok(guard)
}
