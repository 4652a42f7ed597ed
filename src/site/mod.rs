//! Client for the Codabench site, speaking exactly what the Python worker
//! speaks (see `codabench-protocol.md` §3.3, §3.9):
//!
//! * status PATCH `<api>/submissions/<id>/`, **form-encoded**, always with
//!   `secret`, null fields omitted, booleans as `True`/`False`; only HTTP
//!   200 is success ([`SiteClient::update`]);
//! * scores POST (JSON `{"secret", "scores"}`) to
//!   `<api>/upload_submission_scores/<id>/` ([`SiteClient::post_scores`]);
//! * presigned PUTs with `Content-Type: application/zip` (result zips *and*
//!   log files) or `text/html` (detailed results), plus the Azure headers
//!   `x-ms-blob-type: BlockBlob` and `x-ms-version: 2018-03-28`
//!   ([`SiteClient::put_bytes`], [`SiteClient::put_file`]);
//! * bundle GETs with retries and digest checks
//!   ([`SiteClient::download_bundle`]);
//! * `WORKER_BUNDLE_URL_REWRITE` (`FROM|TO`) on bundle GETs and PUTs only.
//!
//! Live logs over WebSocket are in [`live`].

pub mod live;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use md5::{Digest, Md5};
use reqwest::StatusCode;
use serde_json::Value;
use tracing::{info, warn};

/// Submission statuses the worker sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Preparing,
    Running,
    Scoring,
    /// Human in the loop: scored, held until an operator decides.
    AwaitingValidation,
    Finished,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Preparing => "Preparing",
            Status::Running => "Running",
            Status::Scoring => "Scoring",
            Status::AwaitingValidation => "Awaiting validation",
            Status::Finished => "Finished",
            Status::Failed => "Failed",
        }
    }
}

/// The `type` of a failure report PATCH; the site appends `error_message`
/// to the step's stderr file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureType {
    DockerImagePullFail,
    ExecutionTimeLimitExceeded,
}

impl FailureType {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureType::DockerImagePullFail => "Docker_Image_Pull_Fail",
            FailureType::ExecutionTimeLimitExceeded => "Execution_Time_Limit_Exceeded",
        }
    }
}

/// One PATCH body. `None` fields are left out, as `requests` does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubmissionUpdate {
    pub status: Option<Status>,
    pub status_details: Option<String>,
    pub md5: Option<String>,
    pub failure_type: Option<FailureType>,
    pub error_message: Option<String>,
    pub is_scoring: Option<bool>,
}

impl SubmissionUpdate {
    pub fn status(status: Status) -> Self {
        SubmissionUpdate {
            status: Some(status),
            ..Default::default()
        }
    }

    /// `status=Running` with `status_details=ingestion_hostname-<h>`
    /// (prediction) or `scoring_hostname-<h>` (scoring).
    pub fn running_on(hostname: &str, is_scoring: bool) -> Self {
        let prefix = if is_scoring {
            "scoring_hostname"
        } else {
            "ingestion_hostname"
        };
        SubmissionUpdate {
            status: Some(Status::Running),
            status_details: Some(format!("{prefix}-{hostname}")),
            ..Default::default()
        }
    }

    /// `status=Failed` with a message for the participant.
    pub fn failed(message: impl Into<String>) -> Self {
        SubmissionUpdate {
            status: Some(Status::Failed),
            status_details: Some(message.into()),
            ..Default::default()
        }
    }

    /// A failure report (`type`, `error_message`, `is_scoring`).
    pub fn failure_report(kind: FailureType, message: impl Into<String>, is_scoring: bool) -> Self {
        SubmissionUpdate {
            failure_type: Some(kind),
            error_message: Some(message.into()),
            is_scoring: Some(is_scoring),
            ..Default::default()
        }
    }

    /// The form fields in the Python worker's order, `secret` last.
    pub fn form_fields(&self, secret: &str) -> Vec<(&'static str, String)> {
        let mut f = Vec::new();
        if let Some(s) = self.status {
            f.push(("status", s.as_str().to_string()));
        }
        if let Some(d) = &self.status_details {
            f.push(("status_details", d.clone()));
        }
        if let Some(m) = &self.md5 {
            f.push(("md5", m.clone()));
        }
        if let Some(t) = self.failure_type {
            f.push(("type", t.as_str().to_string()));
        }
        if let Some(m) = &self.error_message {
            f.push(("error_message", m.clone()));
        }
        if let Some(b) = self.is_scoring {
            f.push(("is_scoring", python_bool(b).to_string()));
        }
        f.push(("secret", secret.to_string()));
        f
    }
}

/// `True` / `False`, as Python's `str(bool)`.
pub fn python_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// What a PUT uploads; decides the `Content-Type` the URL was signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadKind {
    /// Result zips and stdout/stderr log files (`application/zip`, sic).
    Zip,
    /// The detailed results page (`text/html`).
    Html,
}

impl UploadKind {
    pub fn content_type(self) -> &'static str {
        match self {
            UploadKind::Zip => "application/zip",
            UploadKind::Html => "text/html",
        }
    }
}

/// `WORKER_BUNDLE_URL_REWRITE=FROM|TO`: storage URLs starting with FROM get
/// TO instead (a site that signs URLs for a host the worker cannot reach).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlRewrite {
    pub from: String,
    pub to: String,
}

impl UrlRewrite {
    /// `None` for an empty value or one without `|`.
    pub fn parse(value: &str) -> Option<Self> {
        let (from, to) = value.split_once('|')?;
        if from.is_empty() {
            return None;
        }
        Some(UrlRewrite {
            from: from.to_string(),
            to: to.to_string(),
        })
    }

    pub fn apply(&self, url: &str) -> String {
        match url.strip_prefix(&self.from) {
            Some(rest) => format!("{}{rest}", self.to),
            None => url.to_string(),
        }
    }
}

/// A failure talking to the site or its storage.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("{what}: cannot reach {url}: {source}")]
    Http {
        what: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: {url} answered HTTP {status}: {body}")]
    Status {
        what: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error("Problem fetching {url} to put in {dest}: {reason}")]
    Bundle {
        url: String,
        dest: String,
        reason: String,
    },
    #[error("Bad or empty zip file")]
    BadZip { url: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad site URL {0}")]
    Url(String),
}

impl SiteError {
    /// The request failed before any answer: the connection could not be
    /// made, so the site cannot have acted on it. (A timeout or a reset
    /// after sending may have been acted on.)
    pub fn got_no_answer(&self) -> bool {
        matches!(self, SiteError::Http { source, .. } if source.is_connect())
    }
}

/// Retry policy for idempotent storage requests (GET bundle, PUT).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 5,
            first_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl Retry {
    fn delay(&self, attempt: u32) -> Duration {
        self.first_delay
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(self.max_delay)
    }
}

/// What a finished bundle download produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub bytes: u64,
    /// Hex MD5 of the file (PATCHed as `md5` for the submission zip).
    pub md5: String,
}

/// A client for one submission.
#[derive(Debug, Clone)]
pub struct SiteClient {
    http: reqwest::Client,
    api_url: String,
    secret: String,
    submission_id: u64,
    user_pk: u64,
    rewrite: Option<UrlRewrite>,
    retry: Retry,
}

impl SiteClient {
    /// `api_url` is `run_args.submissions_api_url`.
    pub fn new(
        api_url: &str,
        submission_id: u64,
        user_pk: u64,
        secret: &str,
    ) -> Result<Self, SiteError> {
        url::Url::parse(api_url).map_err(|e| SiteError::Url(format!("{api_url}: {e}")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| SiteError::Http {
                what: "creating the HTTP client".into(),
                url: api_url.into(),
                source: e,
            })?;
        Ok(SiteClient {
            http,
            api_url: api_url.trim_end_matches('/').to_string(),
            secret: secret.to_string(),
            submission_id,
            user_pk,
            rewrite: None,
            retry: Retry::default(),
        })
    }

    /// Apply `WORKER_BUNDLE_URL_REWRITE` to storage URLs.
    pub fn with_rewrite(mut self, rewrite: Option<UrlRewrite>) -> Self {
        self.rewrite = rewrite;
        self
    }

    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }
    pub fn submission_id(&self) -> u64 {
        self.submission_id
    }
    pub fn user_pk(&self) -> u64 {
        self.user_pk
    }
    pub fn secret(&self) -> &str {
        &self.secret
    }

    fn storage_url(&self, url: &str) -> String {
        match &self.rewrite {
            Some(r) => r.apply(url),
            None => url.to_string(),
        }
    }

    /// Send requests that must not be repeated once the site has seen them
    /// (PATCH, POST): retried only when the connection could not be made.
    async fn send_once(
        &self,
        what: &str,
        url: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SiteError> {
        let mut attempt: u64 = 0;
        loop {
            match build().send().await {
                Ok(r) => return Ok(r),
                Err(e) if e.is_connect() && attempt < 3 => {
                    attempt += 1;
                    warn!("{what}: cannot connect to {url} ({e}); retry {attempt}/3");
                    tokio::time::sleep(Duration::from_secs(attempt)).await;
                }
                Err(e) => {
                    return Err(SiteError::Http {
                        what: what.into(),
                        url: url.into(),
                        source: e,
                    })
                }
            }
        }
    }

    /// PATCH the submission. Only HTTP 200 counts as success.
    pub async fn update(&self, update: &SubmissionUpdate) -> Result<(), SiteError> {
        let url = format!("{}/submissions/{}/", self.api_url, self.submission_id);
        let fields = update.form_fields(&self.secret);
        let what = match update.status {
            Some(s) => format!("updating the submission status to {}", s.as_str()),
            None => "updating the submission".to_string(),
        };
        let resp = self
            .send_once(&what, &url, || {
                self.http
                    .patch(&url)
                    .form(&fields)
                    .timeout(Duration::from_secs(150))
            })
            .await?;
        let status = resp.status();
        if status != StatusCode::OK {
            let body = resp.text().await.unwrap_or_default();
            return Err(SiteError::Status {
                what,
                url,
                status: status.as_u16(),
                body: truncate(&body, 500),
            });
        }
        Ok(())
    }

    /// POST the scores (JSON). Any 2xx is success.
    pub async fn post_scores(&self, scores: &Value) -> Result<(), SiteError> {
        let url = format!(
            "{}/upload_submission_scores/{}/",
            self.api_url, self.submission_id
        );
        let body = serde_json::json!({"secret": self.secret, "scores": scores});
        let what = "uploading scores";
        let resp = self
            .send_once(what, &url, || {
                self.http
                    .post(&url)
                    .json(&body)
                    .timeout(Duration::from_secs(150))
            })
            .await?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            return Err(SiteError::Status {
                what: what.into(),
                url,
                status,
                body: truncate(&body, 500),
            });
        }
        Ok(())
    }

    /// PUT bytes to a presigned URL, retrying network errors and 5xx.
    pub async fn put_bytes(
        &self,
        url: &str,
        body: Vec<u8>,
        kind: UploadKind,
    ) -> Result<(), SiteError> {
        let url = self.storage_url(url);
        let what = format!("uploading {} bytes ({})", body.len(), kind.content_type());
        let body = bytes::Bytes::from(body);
        let mut attempt = 0;
        loop {
            let r = self
                .http
                .put(&url)
                .header("Content-Type", kind.content_type())
                .header("x-ms-blob-type", "BlockBlob")
                .header("x-ms-version", "2018-03-28")
                .header("Content-Length", body.len())
                .body(body.clone())
                .timeout(Duration::from_secs(600))
                .send()
                .await;
            let retryable = match r {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    let err = SiteError::Status {
                        what: what.clone(),
                        url: redact(&url),
                        status,
                        body: truncate(&text, 500),
                    };
                    if status < 500 {
                        return Err(err);
                    }
                    err
                }
                Err(e) => SiteError::Http {
                    what: what.clone(),
                    url: redact(&url),
                    source: e,
                },
            };
            attempt += 1;
            if attempt >= self.retry.attempts {
                return Err(retryable);
            }
            warn!("{retryable}; retry {attempt}/{}", self.retry.attempts - 1);
            tokio::time::sleep(self.retry.delay(attempt - 1)).await;
        }
    }

    /// PUT a file to a presigned URL.
    pub async fn put_file(
        &self,
        url: &str,
        path: &Path,
        kind: UploadKind,
    ) -> Result<(), SiteError> {
        let body = tokio::fs::read(path).await.map_err(|e| SiteError::Io {
            what: format!("reading {} for upload", path.display()),
            source: e,
        })?;
        self.put_bytes(url, body, kind).await
    }

    /// Download a bundle zip to `dest_file`.
    ///
    /// Network errors, 5xx, truncated bodies and digest mismatches
    /// (`Content-MD5`, `x-goog-hash: md5=`, or a plain-MD5 S3 `ETag`) are
    /// retried; a 4xx fails at once with the Python worker's message, and a
    /// body that is not a zip fails at once with "Bad or empty zip file".
    pub async fn download_bundle(
        &self,
        url: &str,
        dest_file: &Path,
    ) -> Result<Downloaded, SiteError> {
        let real = self.storage_url(url);
        let dest = dest_file.display().to_string();
        let fail = |reason: String| SiteError::Bundle {
            url: redact(&real),
            dest: dest.clone(),
            reason,
        };
        let mut attempt = 0;
        loop {
            let reason = match self.try_download(&real, dest_file).await {
                Ok(Ok(d)) => {
                    check_zip(dest_file).map_err(|reason| SiteError::BadZip {
                        url: redact(&real),
                        reason,
                    })?;
                    info!(bytes = d.bytes, "downloaded {}", redact(&real));
                    return Ok(d);
                }
                Ok(Err(DownloadProblem::Fatal(reason))) => return Err(fail(reason)),
                Ok(Err(DownloadProblem::Retry(reason))) => reason,
                Err(e) => {
                    return Err(SiteError::Io {
                        what: format!("writing {dest}"),
                        source: e,
                    })
                }
            };
            attempt += 1;
            if attempt >= self.retry.attempts {
                return Err(fail(reason));
            }
            warn!(
                "downloading {} failed ({reason}); retry {attempt}/{}",
                redact(&real),
                self.retry.attempts - 1
            );
            tokio::time::sleep(self.retry.delay(attempt - 1)).await;
        }
    }

    async fn try_download(
        &self,
        url: &str,
        dest: &Path,
    ) -> std::io::Result<Result<Downloaded, DownloadProblem>> {
        use DownloadProblem::*;
        let resp = match self
            .http
            .get(url)
            .timeout(Duration::from_secs(3600))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Ok(Err(Retry(e.to_string()))),
        };
        let status = resp.status();
        if status.is_client_error() {
            return Ok(Err(Fatal(format!("HTTP {}", status.as_u16()))));
        }
        if !status.is_success() {
            return Ok(Err(Retry(format!("HTTP {}", status.as_u16()))));
        }
        let expected_len = resp.content_length();
        let expected_md5 = expected_md5(resp.headers());
        let mut file = std::fs::File::create(dest)?;
        let mut hasher = Md5::new();
        let mut n = 0u64;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return Ok(Err(Retry(format!("transfer interrupted: {e}")))),
            };
            hasher.update(&chunk);
            file.write_all(&chunk)?;
            n += chunk.len() as u64;
        }
        file.flush()?;
        if let Some(len) = expected_len {
            if len != n {
                return Ok(Err(Retry(format!("got {n} of {len} bytes"))));
            }
        }
        let md5 = hex::encode(hasher.finalize());
        if let Some(want) = expected_md5 {
            if want != md5 {
                return Ok(Err(Retry(format!(
                    "MD5 mismatch: storage says {want}, got {md5}"
                ))));
            }
        }
        Ok(Ok(Downloaded { bytes: n, md5 }))
    }
}

enum DownloadProblem {
    Retry(String),
    Fatal(String),
}

/// The MD5 the storage claims for the object, as lower-case hex.
fn expected_md5(h: &reqwest::header::HeaderMap) -> Option<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(v) = h.get("content-md5").and_then(|v| v.to_str().ok()) {
        if let Ok(raw) = b64.decode(v.trim()) {
            if raw.len() == 16 {
                return Some(hex::encode(raw));
            }
        }
    }
    if let Some(v) = h.get("x-goog-hash").and_then(|v| v.to_str().ok()) {
        for part in v.split(',') {
            if let Some(m) = part.trim().strip_prefix("md5=") {
                if let Ok(raw) = b64.decode(m) {
                    if raw.len() == 16 {
                        return Some(hex::encode(raw));
                    }
                }
            }
        }
    }
    if let Some(v) = h.get("etag").and_then(|v| v.to_str().ok()) {
        // Single-part S3/MinIO uploads: the ETag is the MD5 in quotes;
        // multipart ETags contain a `-` and are not an MD5.
        let e = v.trim().trim_start_matches("W/").trim_matches('"');
        if e.len() == 32 && e.chars().all(|c| c.is_ascii_hexdigit()) {
            return Some(e.to_ascii_lowercase());
        }
    }
    None
}

/// Whether `path` is a readable zip with at least its central directory.
fn check_zip(path: &Path) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    zip::ZipArchive::new(f)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Hide the secret in a `/submission_input/<pk>/<id>/<secret>/` URL.
pub(crate) fn redact_secret_path(url: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    let mut parts: Vec<&str> = base.trim_end_matches('/').split('/').collect();
    if let Some(last) = parts.last_mut() {
        *last = "<secret>";
    }
    format!("{}/", parts.join("/"))
}

/// Drop the query string (presigned signatures) from a URL for logs.
pub fn redact(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_string(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_match_the_python_worker() {
        let f = SubmissionUpdate::running_on("1a2b3d4e5f67", false).form_fields("S");
        assert_eq!(
            f,
            vec![
                ("status", "Running".to_string()),
                (
                    "status_details",
                    "ingestion_hostname-1a2b3d4e5f67".to_string()
                ),
                ("secret", "S".to_string())
            ]
        );
        let f = SubmissionUpdate::failure_report(
            FailureType::ExecutionTimeLimitExceeded,
            "Execution Time Limit exceeded. Limit was 600 seconds",
            true,
        )
        .form_fields("S");
        let body = serde_urlencoded_like(&f);
        assert_eq!(body, "type=Execution_Time_Limit_Exceeded&error_message=Execution+Time+Limit+exceeded.+Limit+was+600+seconds&is_scoring=True&secret=S");
        assert_eq!(
            SubmissionUpdate::status(Status::Preparing)
                .form_fields("S")
                .len(),
            2
        );
    }

    fn serde_urlencoded_like(f: &[(&str, String)]) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(f.iter().map(|(k, v)| (*k, v.as_str())))
            .finish()
    }

    #[test]
    fn rewrite_is_a_prefix_rewrite() {
        let r = UrlRewrite::parse("http://minio:9000|http://127.0.0.1:9000").unwrap();
        assert_eq!(
            r.apply("http://minio:9000/b/x.zip?s=1"),
            "http://127.0.0.1:9000/b/x.zip?s=1"
        );
        assert_eq!(r.apply("http://other/x"), "http://other/x");
        assert!(UrlRewrite::parse("").is_none());
        assert!(UrlRewrite::parse("no-bar").is_none());
    }

    #[test]
    fn storage_md5_headers() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            "etag",
            "\"d41d8cd98f00b204e9800998ecf8427e\"".parse().unwrap(),
        );
        assert_eq!(
            expected_md5(&h).unwrap(),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        h.insert("etag", "\"abc-2\"".parse().unwrap());
        assert_eq!(expected_md5(&h), None);
        h.insert("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg==".parse().unwrap());
        assert_eq!(
            expected_md5(&h).unwrap(),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
    }
}
