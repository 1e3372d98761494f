//! The signature gate: a manifest of a repository under a `[[signatures]]` policy is served
//! only when a cosign signature by one of the policy's keys verifies and names that manifest's
//! digest. Signatures are looked for where cosign puts them (the `sha256-<hex>.sig` tag of the
//! same repository, and OCI 1.1 referrers), fetched and kept like any content (so `--offline`
//! and a dead upstream keep enforcing with what is stored), and verdicts are remembered per
//! digest. Blobs are never gated: a blob is only reachable through a manifest that passed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Mirror, ProxyError, Target};
use crate::config::{SignatureMode, SignaturePolicy, glob_matches};
use crate::oci::cosign::{self, PublicKey, Rejection, SignatureLayer};
use crate::oci::{Digest, Reference, Tag, media};
use crate::store::{IMPORT_HOLDER, Referrer};
use crate::upstream::{Resolved, UpstreamError};

/// At most this many signatures are checked for one verdict (over every signature manifest).
const MAX_SIGNATURES_PER_VERDICT: usize = 32;

/// How long a refusal of pushed content is remembered: a signature pushed through another
/// replica is seen within this.
const LOCAL_REFUSAL_TTL: Duration = Duration::from_secs(5);

/// Why a key file of a policy cannot be used; names the key.
#[derive(Debug, thiserror::Error)]
#[error("signatures[{policy}].keys[{key}] = {path:?}: {message}")]
pub struct SignatureKeyError {
    policy: usize,
    key: usize,
    path: std::path::PathBuf,
    message: String,
}

/// One policy, its keys read.
struct Policy {
    upstream: Option<String>,
    repositories: Vec<String>,
    keys: Arc<[PublicKey]>,
    mode: SignatureMode,
    check_identity: bool,
    local: bool,
    verdict_ttl: Duration,
}

impl Policy {
    fn covers(&self, upstream: Option<&str>, repo: &str) -> bool {
        let upstream_matches = match (&self.upstream, upstream) {
            (None, _) => true,
            (Some(wanted), Some(upstream)) => wanted == upstream,
            (Some(_), None) => false,
        };
        upstream_matches && self.repositories.iter().any(|p| glob_matches(p, repo))
    }

    /// The keys as refusals name them.
    fn key_names(&self) -> String {
        self.keys
            .iter()
            .map(PublicKey::describe)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What was found out about one manifest's signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A signature by this key (its file and fingerprint) verifies.
    Verified(String),
    /// Admitted as a child of an image index whose signature verified.
    AdmittedByIndex(Digest),
    /// No signature at all.
    Unsigned,
    /// Signatures, none of them valid for this manifest: why each failed.
    Invalid(String),
    /// The signatures could not be looked up (the upstream is unavailable and nothing is
    /// stored); not remembered.
    Unchecked(String),
}

impl Verdict {
    /// Whether the manifest may be served.
    pub fn admits(&self) -> bool {
        matches!(self, Verdict::Verified(_) | Verdict::AdmittedByIndex(_))
    }

    /// The metric label of the verdict.
    fn label(&self) -> &'static str {
        match self {
            Verdict::Verified(_) => "verified",
            Verdict::AdmittedByIndex(_) => "admitted_by_index",
            Verdict::Unsigned => "unsigned",
            Verdict::Invalid(_) => "invalid",
            Verdict::Unchecked(_) => "unchecked",
        }
    }

    /// What the UI and the logs say about it.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Verified(key) => format!("verified: signed by {key}"),
            Verdict::AdmittedByIndex(index) => {
                format!("verified through the signed image index {index}")
            }
            Verdict::Unsigned => "unsigned: no .sig tag, no signature referrers".into(),
            Verdict::Invalid(why) => format!("signed, but not validly: {why}"),
            Verdict::Unchecked(why) => format!("signatures could not be looked up: {why}"),
        }
    }
}

/// A tag's standing under a signature policy, for the UI.
#[derive(Debug, Clone)]
pub struct SignatureStatus {
    /// Which `[[signatures]]` policy covers it (its index).
    pub policy: usize,
    /// `mode = "enforce"` (else `warn`).
    pub enforced: bool,
    /// The policy's keys (file and fingerprint).
    pub keys: String,
    /// The remembered verdict; `None` until a pull checks it.
    pub verdict: Option<Verdict>,
}

/// Whose content a manifest is: cached from an upstream, or pushed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// Pulled through the target's upstream.
    Upstream,
    /// Pushed to the mirror.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct VerdictKey {
    policy: usize,
    local: bool,
    repository: String,
    digest: Digest,
}

/// The policies and what they remember.
pub struct SignatureGate {
    policies: Vec<Policy>,
    /// Verdicts, each with the instant it expires.
    verdicts: moka::sync::Cache<VerdictKey, (Verdict, Instant)>,
    /// Children of verified indexes: admitted until the instant.
    admitted: moka::sync::Cache<VerdictKey, (Digest, Instant)>,
    /// Verdicts being worked out, one per key at a time.
    flights: super::Singleflight<VerdictKey, Verdict>,
}

impl Default for SignatureGate {
    fn default() -> Self {
        SignatureGate {
            policies: Vec::new(),
            verdicts: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .support_invalidation_closures()
                .build(),
            admitted: moka::sync::Cache::builder().max_capacity(100_000).build(),
            flights: super::Singleflight::default(),
        }
    }
}

impl SignatureGate {
    /// Reads the keys of `policies` (every key must be a usable PEM public key).
    pub fn load(policies: &[SignaturePolicy]) -> Result<SignatureGate, SignatureKeyError> {
        let mut gate = SignatureGate::default();
        for (i, policy) in policies.iter().enumerate() {
            let mut keys = Vec::new();
            for (j, path) in policy.keys.iter().enumerate() {
                let error = |message: String| SignatureKeyError {
                    policy: i,
                    key: j,
                    path: path.clone(),
                    message,
                };
                let pem = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
                let name = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into(),
                );
                keys.push(PublicKey::from_pem(&pem, &name).map_err(|e| error(e.to_string()))?);
            }
            gate.policies.push(Policy {
                upstream: policy.upstream.clone(),
                repositories: policy.repositories.clone(),
                keys: keys.into(),
                mode: policy.mode,
                check_identity: policy.check_identity,
                local: policy.local,
                verdict_ttl: policy.verdict_ttl,
            });
        }
        Ok(gate)
    }

    /// Whether some policy covers `target`'s content, pulled through or pushed: the one check
    /// a manifest request outside every policy pays.
    pub fn covers(&self, target: &Target) -> bool {
        self.policy_for(target, Origin::Upstream).is_some()
            || self.policy_for(target, Origin::Local).is_some()
    }

    /// Forgets the verdicts on pushed content of `repository` (its one name): something was
    /// pushed to it, perhaps a signature.
    pub fn forget_repository(&self, repository: &str) {
        if self.policies.iter().any(|p| p.local) {
            let repository = repository.to_owned();
            // Only fails when invalidation closures are not enabled, which they are.
            let _ = self
                .verdicts
                .invalidate_entries_if(move |key, _| key.local && key.repository == repository);
        }
    }

    /// The first policy covering `target`'s content of `origin`, with its index.
    fn policy_for(&self, target: &Target, origin: Origin) -> Option<(usize, &Policy)> {
        let (upstream, repo) = match target.route() {
            Some(route) => (Some(route.upstream.name()), route.repo.as_str()),
            None => (None, target.canonical().as_str()),
        };
        self.policies
            .iter()
            .enumerate()
            .find(|(_, p)| (origin == Origin::Upstream || p.local) && p.covers(upstream, repo))
    }

    fn key(index: usize, target: &Target, origin: Origin, digest: &Digest) -> VerdictKey {
        VerdictKey {
            policy: index,
            local: origin == Origin::Local,
            repository: target.canonical().to_string(),
            digest: digest.clone(),
        }
    }

    /// What the UI shows of the manifest `digest` tagged in `repo` of `origin` (an upstream's
    /// name, or [`crate::store::LOCAL`] for pushed repositories): `None` when no policy covers
    /// it. Only what is remembered: a page never sets off a verification.
    pub fn status(&self, origin: &str, repo: &str, digest: &Digest) -> Option<SignatureStatus> {
        let (index, policy, key) = if origin == crate::store::LOCAL {
            let (index, policy) = self.policies.iter().enumerate().find(|(_, p)| {
                // Pushed repositories are listed by their one name: `<upstream>/<repo>`
                // when the name routes to an upstream.
                let routed = repo
                    .split_once('/')
                    .is_some_and(|(upstream, rest)| p.covers(Some(upstream), rest));
                p.local && (routed || p.covers(None, repo))
            })?;
            let key = VerdictKey {
                policy: index,
                local: true,
                repository: repo.to_owned(),
                digest: digest.clone(),
            };
            (index, policy, key)
        } else {
            let (index, policy) = self
                .policies
                .iter()
                .enumerate()
                .find(|(_, p)| p.covers(Some(origin), repo))?;
            let key = VerdictKey {
                policy: index,
                local: false,
                repository: format!("{origin}/{repo}"),
                digest: digest.clone(),
            };
            (index, policy, key)
        };
        Some(SignatureStatus {
            policy: index,
            enforced: policy.mode == SignatureMode::Enforce,
            keys: policy.key_names(),
            verdict: self.fresh(&key),
        })
    }

    /// The remembered verdict on `key`: its own, unless that is a refusal and a signed index
    /// admitted it since.
    fn fresh(&self, key: &VerdictKey) -> Option<Verdict> {
        let now = Instant::now();
        let own = self
            .verdicts
            .get(key)
            .filter(|(_, until)| now < *until)
            .map(|(verdict, _)| verdict);
        if own.as_ref().is_some_and(Verdict::admits) {
            return own;
        }
        match self.admitted.get(key) {
            Some((index, until)) if now < until => Some(Verdict::AdmittedByIndex(index)),
            _ => own,
        }
    }
}

/// A signature manifest and where it was found.
struct Found {
    /// The `.sig` tag it was found at; `None` for a referrer.
    tag: Option<Tag>,
    manifest: Bytes,
}

impl Mirror {
    /// The signature gate for a manifest answered through `target`'s route: content pushed to
    /// `target` (a pushed name that shadows the upstream's) is gated as pushed content,
    /// everything else as the upstream's. Free when no policy covers `target`.
    pub(super) async fn check_routed_signature(
        self: &Arc<Self>,
        target: &Target,
        answer: &super::ManifestAnswer,
    ) -> Result<(), ProxyError> {
        if !self.signatures.covers(target) {
            return Ok(());
        }
        let origin = self.origin_of(target, &answer.digest).await;
        self.check_signature(target, origin, &answer.digest, answer.body.as_ref())
            .await
    }

    /// Whose content the manifest `digest` is, as `target` serves it: pushed to `target` (or
    /// to a name that routes nowhere), else the upstream's (cached, or imported by the
    /// operator, which is trusted as cached content is).
    pub(super) async fn origin_of(&self, target: &Target, digest: &Digest) -> Origin {
        if target.route().is_none() {
            return Origin::Local;
        }
        let pushed = self
            .store
            .holders_cached(digest)
            .await
            .is_ok_and(|holders| holders.iter().any(|h| target.holds(h)));
        if pushed {
            Origin::Local
        } else {
            Origin::Upstream
        }
    }

    /// Lets the manifest `digest` (with its bytes, when at hand) of `target` through the
    /// signature gate, or refuses it: 403 DENIED naming the keys in `enforce` mode, a WARN
    /// line in `warn` mode.
    pub(super) async fn check_signature(
        self: &Arc<Self>,
        target: &Target,
        origin: Origin,
        digest: &Digest,
        body: Option<&Bytes>,
    ) -> Result<(), ProxyError> {
        let Some((index, policy)) = self.signatures.policy_for(target, origin) else {
            return Ok(());
        };
        let key = SignatureGate::key(index, target, origin, digest);
        let verdict = match self.signatures.fresh(&key) {
            Some(verdict) => verdict,
            // A signature manifest is no image: clients that verify signatures fetch it.
            None if body.is_some_and(|b| cosign::is_signature_manifest(b)) => return Ok(()),
            // Boxed: working a verdict out is rare, and its future is large; inline, every
            // manifest request's future would carry (and move) its size.
            None => Box::pin(self.verdict(target, origin, key.clone())).await,
        };
        if verdict.admits() {
            if let Some(body) = body {
                self.admit_children(&key, digest, body, policy.verdict_ttl);
            }
            self.metrics
                .signature_decisions
                .with_label_values(&["served"])
                .inc();
            return Ok(());
        }
        if self
            .is_signature_manifest(target, origin, digest, body)
            .await
        {
            return Ok(());
        }
        let message = format!(
            "no valid signature from {} for {}@{digest}: {}",
            policy.key_names(),
            target.canonical(),
            verdict.describe()
        );
        match policy.mode {
            SignatureMode::Enforce => {
                self.metrics
                    .signature_decisions
                    .with_label_values(&["refused"])
                    .inc();
                tracing::info!(repository = %target.canonical(), %digest, verdict = verdict.label(), "refused by the signature policy: {message}");
                Err(ProxyError::Denied(message))
            }
            SignatureMode::Warn => {
                self.metrics
                    .signature_decisions
                    .with_label_values(&["warned"])
                    .inc();
                tracing::warn!(repository = %target.canonical(), %digest, verdict = verdict.label(), "served although the signature policy would refuse it (mode = \"warn\"): {message}");
                Ok(())
            }
        }
    }

    /// The signature manifests of the manifest `digest` as `target` sees it (at its `.sig`
    /// tag, and among its referrers; stored, else asked of the upstream), each with the tag
    /// it was found at: what an export bundle carries beside the image.
    pub async fn signatures_of(
        self: &Arc<Self>,
        target: &Target,
        digest: &Digest,
    ) -> Vec<(Option<Tag>, Digest)> {
        let origin = self.origin_of(target, digest).await;
        let (found, _) = self.signature_manifests(target, origin, digest).await;
        found
            .into_iter()
            .map(|f| (f.tag, Digest::of_bytes(&f.manifest)))
            .collect()
    }

    /// Whether `digest` is a cosign signature manifest (read from the store, or fetched by
    /// digest when only a HEAD brought it here).
    async fn is_signature_manifest(
        self: &Arc<Self>,
        target: &Target,
        origin: Origin,
        digest: &Digest,
        body: Option<&Bytes>,
    ) -> bool {
        if let Some(body) = body {
            return cosign::is_signature_manifest(body);
        }
        if let Ok(Some(stored)) = self.store.read_manifest(digest).await {
            return cosign::is_signature_manifest(&stored.bytes);
        }
        match (origin, target.route()) {
            (Origin::Upstream, Some(route)) => self
                .routed_manifest(target, route, &Reference::Digest(digest.clone()), false)
                .await
                .ok()
                .and_then(|a| a.body)
                .is_some_and(|b: Bytes| cosign::is_signature_manifest(b.as_ref())),
            _ => false,
        }
    }

    /// An image index that verified admits its children (pulled by digest next) for as long
    /// as its own verdict lasts.
    fn admit_children(&self, key: &VerdictKey, digest: &Digest, body: &Bytes, ttl: Duration) {
        let media_type = media::manifest_media_type(None, body);
        let Ok(parsed) = crate::oci::manifest::Manifest::parse(Some(&media_type), body) else {
            return;
        };
        let until = Instant::now() + ttl;
        for child in parsed.children.iter().take(1024) {
            let child_key = VerdictKey {
                digest: child.clone(),
                ..key.clone()
            };
            self.signatures
                .admitted
                .insert(child_key, (digest.clone(), until));
        }
    }

    /// Works the verdict out (once per key at a time) and remembers it: a verification for
    /// `verdict_ttl`, a refusal at most the upstream's `negative_ttl` (pushed content: at most
    /// [`LOCAL_REFUSAL_TTL`], and until the next push to the repository on this replica), an
    /// unchecked one not at all.
    async fn verdict(
        self: &Arc<Self>,
        target: &Target,
        origin: Origin,
        key: VerdictKey,
    ) -> Verdict {
        let mirror = Arc::clone(self);
        let (target_owned, key_owned) = (target.clone(), key.clone());
        let (verdict, _) = self
            .signatures
            .flights
            .run(key.clone(), async move {
                mirror
                    .work_out_verdict(&target_owned, origin, &key_owned)
                    .await
            })
            .await;
        let verdict =
            verdict.unwrap_or_else(|| Verdict::Unchecked("the verification task failed".into()));
        self.metrics
            .signature_verdicts
            .with_label_values(&[verdict.label()])
            .inc();
        let Some(policy) = self.signatures.policies.get(key.policy) else {
            return verdict;
        };
        let keep_for = match (&verdict, origin, target.route()) {
            (Verdict::Verified(_), _, _) => Some(policy.verdict_ttl),
            (Verdict::Unsigned | Verdict::Invalid(_), Origin::Upstream, Some(route)) => {
                Some(policy.verdict_ttl.min(route.upstream.config().negative_ttl))
            }
            (Verdict::Unsigned | Verdict::Invalid(_), Origin::Local, _) => {
                Some(policy.verdict_ttl.min(LOCAL_REFUSAL_TTL))
            }
            _ => None,
        };
        if let Some(ttl) = keep_for.filter(|t| !t.is_zero()) {
            self.signatures
                .verdicts
                .insert(key, (verdict.clone(), Instant::now() + ttl));
        }
        verdict
    }

    async fn work_out_verdict(
        self: &Arc<Self>,
        target: &Target,
        origin: Origin,
        key: &VerdictKey,
    ) -> Verdict {
        let Some(policy) = self.signatures.policies.get(key.policy) else {
            return Verdict::Unchecked("no such policy".into());
        };
        let digest = &key.digest;
        let (found, mut trouble) = self.signature_manifests(target, origin, digest).await;
        let mut signatures = Vec::new();
        for manifest in &found {
            for layer in cosign::signature_layers(&manifest.manifest) {
                if signatures.len() == MAX_SIGNATURES_PER_VERDICT {
                    break;
                }
                match self.payload(target, origin, &layer).await {
                    Ok(payload) => signatures.push((payload, layer.signature)),
                    Err(e) => trouble.push(e),
                }
            }
        }
        if signatures.is_empty() {
            return match trouble.into_iter().next() {
                Some(why) => Verdict::Unchecked(why),
                None if found.is_empty() => Verdict::Unsigned,
                None => Verdict::Invalid("no signature layers".into()),
            };
        }
        let keys = Arc::clone(&policy.keys);
        let repository = policy.check_identity.then(|| match target.route() {
            Some(route) => route.repo.to_string(),
            None => target.canonical().to_string(),
        });
        let digest = digest.clone();
        // ECDSA verification is CPU work: off the async workers.
        let checked = tokio::task::spawn_blocking(move || {
            let expected = cosign::Expectation {
                digest: &digest,
                repository: repository.as_deref(),
            };
            let mut rejections: Vec<Rejection> = Vec::new();
            for (payload, signature) in &signatures {
                match cosign::verify(&keys, payload, signature, expected) {
                    Ok(key) => return Ok(key.describe()),
                    Err(e) => {
                        if !rejections.contains(&e) {
                            rejections.push(e);
                        }
                    }
                }
            }
            Err(rejections)
        })
        .await;
        match checked {
            Ok(Ok(key)) => Verdict::Verified(key),
            Ok(Err(rejections)) => Verdict::Invalid(
                rejections
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Err(e) => Verdict::Unchecked(format!("the verification task failed: {e}")),
        }
    }

    /// The signature manifests of `digest`: at its `.sig` tag and among its referrers. Also
    /// says what could not be looked up.
    async fn signature_manifests(
        self: &Arc<Self>,
        target: &Target,
        origin: Origin,
        digest: &Digest,
    ) -> (Vec<Found>, Vec<String>) {
        let mut found = Vec::new();
        let mut trouble = Vec::new();
        let route = target.route().filter(|_| origin == Origin::Upstream);
        if let Some(tag) = cosign::signature_tag(digest) {
            // Pushed (or imported) beside the image first, then the upstream's.
            let at_tag = match self.local_manifest(target, &tag).await {
                Ok(Some(m)) => Ok(Some(m.bytes.clone())),
                Ok(None) | Err(_) => match route {
                    Some(route) => self
                        .routed_manifest(target, route, &Reference::Tag(tag.clone()), false)
                        .await
                        .map(|a| a.body),
                    None => Ok(None),
                },
            };
            match at_tag {
                Ok(Some(manifest)) => found.push(Found {
                    tag: Some(tag),
                    manifest,
                }),
                Ok(None) => {}
                Err(e) if is_absent(&e) => {}
                Err(e) => trouble.push(format!("the .sig tag: {e}")),
            }
        }
        match self.signature_referrers(target, route, digest).await {
            Ok(referrers) => found.extend(referrers),
            Err(e) => trouble.push(format!("the referrers: {e}")),
        }
        (found, trouble)
    }

    /// The signature manifests among the referrers of `digest`: those stored (pushed to
    /// `target`, or kept from the upstream before), and those the upstream lists now.
    async fn signature_referrers(
        self: &Arc<Self>,
        target: &Target,
        route: Option<&Resolved>,
        digest: &Digest,
    ) -> Result<Vec<Found>, ProxyError> {
        let mut digests: Vec<Digest> = Vec::new();
        for referrer in self.store.referrers(digest).await? {
            if referrer.artifact_type.as_deref() != Some(cosign::SIGNATURE_ARTIFACT_TYPE) {
                continue;
            }
            let Ok(manifest) = referrer.digest.parse::<Digest>() else {
                continue;
            };
            let holders = self.store.holders_cached(&manifest).await?;
            let ours = match route {
                // Kept from an upstream (no holders), imported, or pushed to this repository.
                Some(_) => {
                    holders.is_empty()
                        || holders
                            .iter()
                            .any(|h| h == IMPORT_HOLDER || target.holds(h))
                }
                None => holders.iter().any(|h| target.holds(h)),
            };
            if ours {
                digests.push(manifest);
            }
        }
        if let Some(route) = route {
            match route
                .upstream
                .referrers(&route.repo, digest, cosign::SIGNATURE_ARTIFACT_TYPE)
                .await
            {
                Ok(listed) => {
                    for d in listed {
                        if !digests.contains(&d) {
                            digests.push(d);
                        }
                    }
                }
                // No referrers API there, or the upstream is out: what is stored counts.
                Err(e) => tracing::debug!(error = %e, "no referrers from the upstream"),
            }
        }
        let mut found = Vec::new();
        for manifest in digests.into_iter().take(crate::upstream::MAX_REFERRERS) {
            let bytes = match route {
                Some(route) => {
                    let reference = Reference::Digest(manifest.clone());
                    match self.routed_manifest(target, route, &reference, false).await {
                        Ok(answer) => answer.body,
                        Err(e) if is_absent(&e) || unavailable(&e) => None,
                        Err(e) => return Err(e),
                    }
                }
                None => self
                    .store
                    .read_manifest(&manifest)
                    .await?
                    .map(|m| m.bytes.clone()),
            };
            let Some(bytes) = bytes else { continue };
            if route.is_some() {
                // Kept as a referrer, so that it is found offline too.
                self.remember_referrer(digest, &manifest, &bytes).await;
            }
            found.push(Found {
                tag: None,
                manifest: bytes,
            });
        }
        Ok(found)
    }

    async fn remember_referrer(&self, subject: &Digest, digest: &Digest, bytes: &Bytes) {
        let referrer = Referrer {
            media_type: media::manifest_media_type(None, bytes),
            digest: digest.to_string(),
            size: bytes.len() as u64,
            artifact_type: Some(cosign::SIGNATURE_ARTIFACT_TYPE.to_owned()),
            annotations: None,
        };
        if let Err(e) = self.store.add_referrer(subject, &referrer).await {
            tracing::debug!(error = %e, "cannot keep a signature referrer");
        }
    }

    /// A signature's payload: from the store, else (content pulled through) from the
    /// upstream, verified against its digest and kept; at most [`cosign::MAX_PAYLOAD_BYTES`].
    async fn payload(
        &self,
        target: &Target,
        origin: Origin,
        layer: &SignatureLayer,
    ) -> Result<Bytes, String> {
        if let Ok(Some(bytes)) = self.store.read_small_blob(&layer.payload).await {
            return Ok(bytes);
        }
        if origin == Origin::Local || target.route().is_none() {
            return Err(format!("the payload {} is not stored", layer.payload));
        }
        // Through the blob path: fetched once, verified against its digest and kept.
        let answer = self
            .blob(target, &layer.payload, false, None)
            .await
            .map_err(|e| format!("the payload {}: {e}", layer.payload))?;
        if let super::BlobBody::Fill { fill, .. } = answer.body {
            fill.wait_done()
                .await
                .map_err(|e| format!("the payload {}: {e}", layer.payload))?;
        }
        match self.store.read_small_blob(&layer.payload).await {
            Ok(Some(bytes)) if bytes.len() as u64 <= cosign::MAX_PAYLOAD_BYTES => Ok(bytes),
            Ok(Some(_)) => Err(format!("the payload {} is too large", layer.payload)),
            Ok(None) => Err(format!("the payload {} was not kept", layer.payload)),
            Err(e) => Err(format!("the payload {}: {e}", layer.payload)),
        }
    }
}

fn is_absent(e: &ProxyError) -> bool {
    matches!(
        e,
        ProxyError::RememberedNotFound | ProxyError::Upstream(UpstreamError::NotFound)
    )
}

fn unavailable(e: &ProxyError) -> bool {
    matches!(e, ProxyError::Upstream(u) if u.is_unavailable())
}
