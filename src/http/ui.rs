//! The web UI at `/ui/`: server-rendered HTML (maud escapes everything it prints), plain CSS,
//! no JavaScript. Read-only: it shows what the mirror holds and how it is doing, and changes
//! nothing. It asks the same permission as `_catalog` (with `anonymous_pull = false`, a login:
//! browsers get a Basic challenge).

use http::{HeaderValue, Response, StatusCode, header};
use maud::{DOCTYPE, Markup, html};

use super::body::full;
use super::errors::{ApiError, Resource, proxy_error};
use super::routes::Page;
use super::{Answer, Ctx};
use crate::oci::{Digest, ErrorCode, RepoName};
use crate::proxy::inventory::{ManifestView, PartView, StatusView, TagView};
use crate::store::LOCAL;

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { background: #1d2330; color: #fff; padding: .6rem 1.2rem; display: flex; gap: 1.4rem; align-items: center; }
header a { color: #cfe0ff; text-decoration: none; } header b { font-size: 1.1rem; }
main { padding: 1rem 1.2rem; max-width: 1200px; }
table { border-collapse: collapse; width: 100%; background: #fff; margin: .5rem 0 1.2rem; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e6eb; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; }
code { font: 12px ui-monospace, monospace; }
.tag { display: inline-block; padding: 0 .4rem; border-radius: .6rem; font-size: 12px; }
.pushed { background: #dff3e4; } .cached { background: #e3ecfb; } .immutable { background: #f6ead2; }
.bad { color: #a1260d; } .verified { background: #dff3e4; } .refused { background: #f8d9d3; } .unchecked { background: #eceef1; } .muted { color: #69707d; }
form input { padding: .3rem .5rem; width: 20rem; } pre { background: #fff; padding: .8rem; overflow: auto; }
.cards { display: flex; gap: 1rem; flex-wrap: wrap; }
.card { background: #fff; padding: .7rem 1rem; border: 1px solid #e3e6eb; min-width: 12rem; }
.card b { display: block; font-size: 1.4rem; }
code.pull { user-select: all; color: #3a4356; } .pager a { margin-right: 1rem; }
"#;

/// Answers a UI request.
pub async fn page(ctx: &Ctx<'_>, page: Page) -> Answer {
    let rendered = match page {
        Page::Style => {
            let mut response = Response::new(full(STYLE));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            );
            return Answer::plain(response);
        }
        Page::Root => return redirect("/ui/"),
        Page::Repositories => repositories(ctx).await,
        Page::Repository => repository(ctx).await,
        Page::Manifest => manifest(ctx).await,
        Page::Blob => blob(ctx).await,
        Page::Status => Ok(status(&ctx.mirror.status_view())),
        Page::NotFound => Err(ApiError::new(
            ErrorCode::NameUnknown,
            "There is no such page.",
        )),
    };
    match rendered {
        Ok(markup) => Answer::plain(html_response(markup, StatusCode::OK)),
        Err(e) => Answer::plain(error_page(&e)),
    }
}

/// An error as a page in the UI's style, with the error's status (404 for what does not
/// exist, 400 for a bad parameter).
fn error_page(e: &ApiError) -> Response<super::body::Body> {
    let status = e.status.unwrap_or_else(|| e.code.status());
    let title = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::BAD_REQUEST => "Bad request",
        _ => "Error",
    };
    let markup = layout(
        title,
        html! {
            h1 { (title) }
            p { (e.message) }
            p { a href="/ui/" { "Back to the repositories" } }
        },
    );
    let mut response = html_response(markup, status);
    for (name, value) in &e.headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(name.clone(), value);
        }
    }
    response
}

/// A redirect (`/` to the UI).
fn redirect(location: &'static str) -> Answer {
    let mut response = Response::new(super::body::empty());
    *response.status_mut() = StatusCode::FOUND;
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(location));
    Answer::plain(response)
}

fn html_response(markup: Markup, status: StatusCode) -> Response<super::body::Body> {
    let body = markup.into_string();
    let mut response = Response::new(full(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Nothing on these pages runs script or may be framed.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    *response.status_mut() = status;
    response
}

fn layout(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · regmirror" }
                link rel="stylesheet" href="/ui/style.css";
            }
            body {
                header {
                    b { "regmirror" }
                    a href="/ui/" { "Repositories" }
                    a href="/ui/status" { "Status" }
                }
                main { (content) }
            }
        }
    }
}

fn bytes(n: u64) -> String {
    crate::units::HumanBytes(n).to_string()
}

fn when(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let ago = std::time::SystemTime::now()
        .duration_since(time)
        .unwrap_or_default();
    let ago = humantime::format_duration(std::time::Duration::from_secs(ago.as_secs()));
    format!("{} ({ago} ago)", humantime::format_rfc3339_seconds(time))
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".to_owned()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

fn short(digest: &str) -> &str {
    // `sha256:` and 12 hex digits.
    digest.get(..19).unwrap_or(digest)
}

fn query_link(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut url = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        url.append_pair(k, v);
    }
    format!("{path}?{}", url.finish())
}

/// Next and previous links of a paged listing; `link` makes the URL of the page after a key
/// (or the first page).
fn pager(
    next: Option<&String>,
    previous: Option<&Option<String>>,
    link: impl Fn(Option<&str>) -> String,
) -> Markup {
    html! {
        p.pager {
            @if let Some(previous) = previous { a href=(link(previous.as_deref())) { "← Previous page" } " " }
            @if let Some(next) = next { a href=(link(Some(next))) { "Next page →" } }
        }
    }
}

async fn repositories(ctx: &Ctx<'_>) -> Result<Markup, ApiError> {
    let q = ctx.query.q.as_deref().unwrap_or("");
    let page = ctx
        .mirror
        .repositories_page(q, ctx.query.last.as_deref())
        .await
        .map_err(|e| proxy_error(e, Resource::Repository, LOCAL))?;
    let repos = &page.items;
    let link = |last: Option<&str>| match last {
        Some(last) => query_link("/ui/", &[("q", q), ("last", last)]),
        None => query_link("/ui/", &[("q", q)]),
    };
    Ok(layout(
        "Repositories",
        html! {
            h1 { "Repositories" }
            form method="get" action="/ui/" {
                input type="search" name="q" value=(q) placeholder="Search repository names";
                " " button type="submit" { "Search" }
            }
            table {
                tr { th { "Repository" } th { "Tags" } th { "Size" } th { "Last pulled" } th { "Held as" } th { "From" } }
                @for r in repos {
                    tr {
                        td { a href=(query_link("/ui/repo", &[("origin", &r.origin), ("name", &r.name)])) { (r.display) } }
                        td { (r.tags) }
                        td title={ "the images of its first " (crate::proxy::inventory::SIZED_TAGS) " tags" } {
                            @if r.size.1 { "≥ " } (bytes(r.size.0))
                        }
                        td { (last_pulled(r.last_pulled_ms)) }
                        @if r.origin == LOCAL {
                            td { span.tag.pushed { "pushed" } } td.muted { "pushed to this mirror" }
                        } @else {
                            td { span.tag.cached { "cached" } } td { (r.origin) }
                        }
                    }
                }
            }
            @if repos.is_empty() { p.muted { "No repository matches." } }
            (pager(page.next.as_ref(), page.previous.as_ref(), link))
            p.muted { (crate::proxy::inventory::PAGE_REPOSITORIES) " repositories a page, by name." }
        },
    ))
}

fn last_pulled(ms: Option<u64>) -> Markup {
    html! {
        @match ms {
            Some(ms) => (when(ms)),
            None => span.muted title="not pulled through this replica since it started" { "never" },
        }
    }
}

/// A tag's standing under its signature policy: verified (by which key), refused or served
/// with a warning (and why), or not checked yet.
fn signature_badge(status: &crate::proxy::SignatureStatus) -> Markup {
    let policy = format!("signatures[{}]: keys {}", status.policy, status.keys);
    html! {
        @match &status.verdict {
            Some(v) if v.admits() => span.tag.verified title=(policy) { "signed: " (v.describe()) },
            Some(v) if status.enforced => span.tag.refused title=(policy) { "refused: " (v.describe()) },
            Some(v) => span.tag.refused title=(policy) { "served with a warning: " (v.describe()) },
            None => span.tag.unchecked title=(policy) { "signature not checked yet (checked at the next pull)" },
        }
    }
}

fn tag_row(origin: &str, pull: &str, t: &TagView) -> Markup {
    let digest = &t.record.digest;
    html! {
        tr {
            td {
                code { (t.tag) }
                @if t.immutable { " " span.tag.immutable title="matches immutable_tags: never revalidated" { "immutable" } }
                @if let Some(status) = &t.signature { " " (signature_badge(status)) }
                br; code.pull title="select to copy" { "docker pull " (pull) ":" (t.tag) }
            }
            td { a href=(query_link("/ui/manifest", &[("digest", digest)])) { code { (short(digest)) "…" } } }
            td { code { (t.record.media_type) } }
            td {
                @for p in &t.platforms { code { (p) } br; }
                @if t.more_children > 0 { span.muted { "and " (t.more_children) " more" } }
            }
            td { (bytes(t.total_size)) }
            td { (when(t.record.fetched_at_ms)) br; span.muted { @if origin == LOCAL { "pushed" } @else { "fetched / confirmed" } } }
            td { (last_pulled(t.last_pulled_ms)) }
        }
    }
}

async fn repository(ctx: &Ctx<'_>) -> Result<Markup, ApiError> {
    let origin = ctx.query.origin.as_deref().unwrap_or(LOCAL);
    let Some(name) = ctx.query.repo.as_deref() else {
        return Err(ApiError::new(
            ErrorCode::NameInvalid,
            "Which repository? This page needs ?origin=...&name=... (follow a link from the list).",
        ));
    };
    let name: RepoName = name
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::NameInvalid, "That is not a repository name."))?;
    let unknown = || {
        ApiError::new(
            ErrorCode::NameUnknown,
            format!("The mirror holds no repository {name} from {origin}."),
        )
    };
    let title = ctx
        .mirror
        .repository_title(origin, &name)
        .await
        .map_err(|e| proxy_error(e, Resource::Repository, LOCAL))?
        .ok_or_else(unknown)?;
    let page = ctx
        .mirror
        .repository_view(origin, &name, ctx.query.last.as_deref())
        .await
        .map_err(|e| proxy_error(e, Resource::Repository, LOCAL))?;
    let tags = &page.items;
    let pull = format!("{}/{title}", ctx.pull_host());
    let link = |last: Option<&str>| {
        let mut pairs = vec![("origin", origin), ("name", name.as_str())];
        pairs.extend(last.map(|l| ("last", l)));
        query_link("/ui/repo", &pairs)
    };
    Ok(layout(
        &title,
        html! {
            h1 { (title) }
            p {
                @if origin == LOCAL { span.tag.pushed { "pushed" } " to this mirror" }
                @else { span.tag.cached { "cached" } " from " (origin) }
            }
            table {
                tr { th { "Tag" } th { "Digest" } th { "Media type" } th { "Platforms" } th { "Size" } th { "Recorded" } th { "Last pulled" } }
                @for t in tags { (tag_row(origin, &pull, t)) }
            }
            @if tags.is_empty() { p.muted { "No tags on this page." } }
            (pager(page.next.as_ref(), page.previous.as_ref(), link))
            p.muted { (crate::proxy::inventory::PAGE_TAGS) " tags a page, sorted by name." }
        },
    ))
}

/// A table of a manifest's parts: configs and layers link to their blob page (seen from
/// `manifest`), child manifests to theirs.
fn parts(title: &str, manifest: &str, items: &[PartView], blobs: bool) -> Markup {
    html! {
        @if !items.is_empty() {
            h2 { (title) }
            table {
                tr { th { "Digest" } th { "Media type" } th { "Size" } @if !blobs { th { "Platform" } } }
                @for p in items {
                    tr {
                        td {
                            @if blobs {
                                a href=(query_link("/ui/blob", &[("digest", &p.digest), ("manifest", manifest)])) { code { (short(&p.digest)) "…" } }
                            } @else {
                                a href=(query_link("/ui/manifest", &[("digest", &p.digest)])) { code { (short(&p.digest)) "…" } }
                            }
                        }
                        td { code { (p.media_type) } }
                        td { (bytes(p.size)) }
                        @if !blobs {
                            td {
                                @if let Some(platform) = &p.platform { code { (platform) } }
                                @if let Some(attests) = &p.attests {
                                    span.tag.immutable { "attestation" } " of "
                                    a href=(query_link("/ui/manifest", &[("digest", attests)])) { code { (short(attests)) "…" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn manifest_page(m: &ManifestView, last_pulled_ms: Option<u64>) -> Markup {
    let title = m.digest.to_string();
    let total: u64 =
        m.config.as_ref().map_or(0, |c| c.size) + m.layers.iter().map(|l| l.size).sum::<u64>();
    layout(
        &title,
        html! {
            h1 { "Manifest" }
            p { code { (title) } }
            p { code { (m.media_type) } " · " (bytes(m.size)) @if !m.layers.is_empty() { " · image " (bytes(total)) } }
            p { "Last pulled by digest or through a tag: " (last_pulled(last_pulled_ms)) }
            @if let Some(config) = &m.config { (parts("Config", &title, std::slice::from_ref(config), true)) }
            (parts("Layers", &title, &m.layers, true))
            (parts("Manifests", &title, &m.children, false))
            @if m.more_parts > 0 { p.muted { "… and " (m.more_parts) " more, in the document." } }
            h2 { "Referrers" }
            @if m.referrers.is_empty() { p.muted { "No signatures, SBOMs or attestations refer to it." } }
            @else {
                table {
                    tr { th { "Digest" } th { "Artifact type" } th { "Pushed to" } th { "Media type" } th { "Size" } }
                    @for view in &m.referrers {
                        @let r = &view.referrer;
                        tr {
                            td { a href=(query_link("/ui/manifest", &[("digest", &r.digest)])) { code { (short(&r.digest)) "…" } } }
                            td { (r.artifact_type.as_deref().unwrap_or("–")) }
                            td { (view.repositories.join(", ")) }
                            td { code { (r.media_type) } }
                            td { (bytes(r.size)) }
                        }
                    }
                }
            }
            h2 { "Document" }
            @if m.cut { p.muted { "The first " (bytes(crate::proxy::inventory::SHOWN_DOCUMENT as u64)) " of " (bytes(m.size)) ":" } }
            pre { code { (m.pretty) } }
        },
    )
}

fn digest_param(value: Option<&str>) -> Result<Digest, ApiError> {
    let Some(value) = value else {
        return Err(ApiError::new(
            ErrorCode::DigestInvalid,
            "Which digest? This page needs ?digest=sha256:... (follow a link).",
        ));
    };
    value.parse().map_err(|e: crate::oci::DigestError| {
        ApiError::new(
            ErrorCode::DigestInvalid,
            format!("That is not a digest: {e}"),
        )
    })
}

async fn manifest(ctx: &Ctx<'_>) -> Result<Markup, ApiError> {
    let digest = digest_param(ctx.query.digest.as_deref())?;
    match ctx.mirror.manifest_view(&digest).await {
        Ok(Some(view)) => Ok(manifest_page(&view, ctx.mirror.store.last_access(&digest))),
        Ok(None) => Err(ApiError::new(
            ErrorCode::ManifestUnknown,
            format!("The mirror holds no manifest {digest}."),
        )),
        Err(e) => Err(proxy_error(e, Resource::Manifest, LOCAL)),
    }
}

/// A config or layer: what the manifest it was reached from says of it, its size in the
/// store, and where to download it.
async fn blob(ctx: &Ctx<'_>) -> Result<Markup, ApiError> {
    let digest = digest_param(ctx.query.digest.as_deref())?;
    let manifest = digest_param(ctx.query.manifest.as_deref())?;
    let view = ctx
        .mirror
        .blob_view(&digest, &manifest)
        .await
        .map_err(|e| proxy_error(e, Resource::Blob, LOCAL))?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::BlobUnknown,
                format!("The mirror holds no blob {digest} in manifest {manifest}."),
            )
        })?;
    let title = digest.to_string();
    Ok(layout(
        &title,
        html! {
            h1 { @if view.is_config { "Config" } @else { "Layer" } }
            p { code { (title) } }
            table {
                tr { th { "Media type" } td { code { (view.media_type) } } }
                tr { th { "Size" } td { (bytes(view.size)) } }
                tr { th { "Stored" } td { @if view.stored { "yes" } @else { span.muted { "not yet: fetched on its first pull" } } } }
                tr { th { "Referenced by" } td { a href=(query_link("/ui/manifest", &[("digest", &manifest.to_string())])) { code { (manifest) } } } }
                @if let Some(repo) = &view.repository {
                    tr { th { "Download" } td { a href={ "/v2/" (repo) "/blobs/" (digest) } { "/v2/" (repo) "/blobs/" (short(&digest.to_string())) "…" } } }
                }
            }
            p.muted { "Other manifests may use it too: the mirror keeps no index from blobs to the manifests that list them." }
        },
    ))
}

fn status(s: &StatusView) -> Markup {
    let tally_rows = [("Today (UTC)", &s.today), ("Since start", &s.since_start)];
    layout(
        "Status",
        html! {
            h1 { "Status" }
            @if s.offline { p.bad { "Offline: no upstream is contacted." } }
            @if !s.store_loaded {
                p.bad { "The object store has not answered since this replica started: not ready; it loads the store's index as soon as the store answers." }
            }
            @if let Some((since, why)) = &s.store_outage {
                p.bad {
                    "The object store is unavailable since " (when(*since)) ": " (why) ". "
                    "Serving degraded: cached content is served, pulls pass through from the upstream verified but not kept, pushes and deletes are refused (503)."
                }
            }
            div.cards {
                div.card { b { (percent(s.since_start.hits, s.since_start.lookups)) } "hit ratio since start" }
                div.card { b { (bytes(s.since_start.cache_bytes)) } "served from the cache (saved)" }
                div.card { b { (s.fills_in_flight) } "fills in flight" }
                div.card {
                    b { (bytes(s.store_bytes)) }
                    @if s.max_size > 0 { "of " (bytes(s.max_size)) " (" (percent(s.store_bytes, s.max_size)) ")" } @else { "stored, no cap" }
                }
            }
            h2 { "Traffic" }
            table {
                tr { th { "" } th { "Lookups" } th { "Hit ratio" } th { "Bytes from cache" } th { "Bytes from upstream" } }
                @for (label, t) in tally_rows {
                    tr {
                        td { (label) } td { (t.lookups) } td { (percent(t.hits, t.lookups)) }
                        td { (bytes(t.cache_bytes)) } td { (bytes(t.upstream_bytes)) }
                    }
                }
            }
            h2 { "Upstreams" }
            table {
                tr { th { "Name" } th { "URL" } th { "Last error" } th { "Rate limit remaining" } th { "Stale serves" } th { "Immutable tags" } }
                @for u in &s.upstreams {
                    tr {
                        td { (u.name) }
                        td { code { (u.url) } }
                        td {
                            @match &u.last_error {
                                Some((at, message)) => {
                                    span.bad { (message) } br;
                                    span.muted { (when(crate::clock::epoch_ms(*at))) }
                                }
                                None => span.muted { "none since start" },
                            }
                        }
                        td { @match u.ratelimit { Some((remaining, limit)) => { (remaining) " of " (limit) }, None => span.muted { "–" } } }
                        td { (u.stale_serves) }
                        td { @for t in &u.immutable_tags { code { (t) } br; } }
                    }
                }
            }
            h2 { "Store" }
            table {
                tr { th { "Blobs" } th { "Bytes" } th { "Unfinished uploads" } th { "max_size" } }
                tr {
                    td { (s.store_blobs) } td { (bytes(s.store_bytes)) } td { (bytes(s.uploads_bytes)) }
                    td { @if s.max_size > 0 { (bytes(s.max_size)) } @else { "no cap" } }
                }
            }
            p.muted { "Prometheus metrics: " a href="/metrics" { "/metrics" } }
        },
    )
}
