//! The Confluent Schema Registry client: fetches a writer schema by id (`GET /schemas/ids/{id}`)
//! or GUID (`GET /schemas/guids/{guid}`, wire format 1), compiles it once and keeps it for the
//! life of the process (a registered schema never changes under its id).
//!
//! One request per call: how often to try again, and what to do meanwhile, is the ingest side's
//! decision ([`crate::ingest`]). Calls block; they are made from ingest threads only.
//!
//! Credentials (basic auth, a bearer token or a token file) are never logged: the URL is shown
//! without its user info, and errors carry no header.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use url::Url;

use crate::format::avro::Plan;
use crate::format::confluent::SchemaRef;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an id the registry said it does not have is answered from memory; a record naming
/// it then fails at once instead of waiting through the retries again.
const MISSING_FOR: Duration = Duration::from_secs(60);

/// Where the registry is and how to prove who we are.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// One or more base URLs (tried in order), without user info.
    pub urls: Vec<Url>,
    pub auth: Auth,
    /// PEM certificates trusted besides the system's, for a registry with a private CA.
    pub ca_pem: Option<(PathBuf, Vec<u8>)>,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
    /// Read before every request: projected service-account tokens rotate.
    BearerFile(PathBuf),
}

/// Never prints a secret.
impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            Auth::None => "none".to_string(),
            Auth::Basic { user, .. } => format!("basic ({user})"),
            Auth::Bearer(_) => "bearer token".to_string(),
            Auth::BearerFile(path) => format!("bearer token file {}", path.display()),
        };
        f.debug_struct("RegistryConfig")
            .field("urls", &self.display_urls())
            .field("auth", &auth)
            .field("ca_file", &self.ca_pem.as_ref().map(|(path, _)| path))
            .finish()
    }
}

impl RegistryConfig {
    pub fn display_urls(&self) -> String {
        self.urls.iter().map(Url::as_str).collect::<Vec<_>>().join(",")
    }
}

/// Why a schema was not had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The registry answered that it does not have it.
    #[error("the schema registry has no schema {0}")]
    NotFound(SchemaRef),
    /// It has it, but it cannot decode records (another schema type, not Avro, references).
    #[error("schema {schema} cannot be used: {reason}")]
    Unusable { schema: SchemaRef, reason: String },
    /// No answer worth trusting: connection refused, timeout, 5xx, credentials refused.
    #[error("schema registry {url} unavailable: {reason}")]
    Unavailable { url: String, reason: String },
}

enum Cached {
    Usable(Arc<Plan>),
    Unusable(String),
    Missing(Instant),
}

pub struct SchemaRegistry {
    config: RegistryConfig,
    /// Built on first use, on an ingest thread: reqwest's blocking client runs its own runtime,
    /// which must not be created inside the server's.
    client: OnceLock<Result<reqwest::blocking::Client, String>>,
    cache: Mutex<HashMap<SchemaRef, Cached>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaResponse {
    schema: String,
    /// Absent for Avro, the registry's first and default type.
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<serde_json::Value>,
}

impl SchemaRegistry {
    pub fn new(config: RegistryConfig) -> SchemaRegistry {
        SchemaRegistry {
            config,
            client: OnceLock::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn display_urls(&self) -> String {
        self.config.display_urls()
    }

    /// What is known of `schema` without asking: `None` when it must be fetched.
    pub fn cached(&self, schema: SchemaRef) -> Option<Result<Arc<Plan>, FetchError>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(&schema)? {
            Cached::Usable(plan) => Some(Ok(plan.clone())),
            Cached::Unusable(reason) => Some(Err(FetchError::Unusable {
                schema,
                reason: reason.clone(),
            })),
            Cached::Missing(since) if since.elapsed() < MISSING_FOR => {
                Some(Err(FetchError::NotFound(schema)))
            }
            Cached::Missing(_) => None,
        }
    }

    /// Remembers for a while that the registry does not have `schema`.
    pub fn remember_missing(&self, schema: SchemaRef) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(schema, Cached::Missing(Instant::now()));
    }

    /// Asks the registry once (each URL in turn while they are unavailable), and keeps what it
    /// answered for good.
    pub fn fetch(&self, schema: SchemaRef) -> Result<Arc<Plan>, FetchError> {
        let client = self.client()?;
        let path = match schema {
            SchemaRef::Id(id) => format!("schemas/ids/{id}"),
            SchemaRef::Guid(guid) => format!("schemas/guids/{}", SchemaRef::guid_text(&guid)),
        };
        let mut last = None;
        for base in &self.config.urls {
            match self.fetch_from(client, base, &path, schema) {
                Err(error @ FetchError::Unavailable { .. }) => last = Some(error),
                answer => return self.keep(schema, answer),
            }
        }
        Err(last.expect("at least one URL"))
    }

    fn keep(&self, schema: SchemaRef, answer: Result<Plan, FetchError>) -> Result<Arc<Plan>, FetchError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match answer {
            Ok(plan) => {
                let plan = Arc::new(plan);
                cache.insert(schema, Cached::Usable(plan.clone()));
                Ok(plan)
            }
            Err(FetchError::Unusable { schema, reason }) => {
                cache.insert(schema, Cached::Unusable(reason.clone()));
                Err(FetchError::Unusable { schema, reason })
            }
            Err(other) => Err(other),
        }
    }

    fn client(&self) -> Result<&reqwest::blocking::Client, FetchError> {
        self.client
            .get_or_init(|| {
                let mut builder = reqwest::blocking::Client::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(REQUEST_TIMEOUT)
                    .user_agent(concat!("cdc-cache/", env!("CARGO_PKG_VERSION")));
                if let Some((path, pem)) = &self.config.ca_pem {
                    for certificate in reqwest::Certificate::from_pem_bundle(pem)
                        .map_err(|e| format!("--schema-registry-ca-file {}: {e}", path.display()))?
                    {
                        builder = builder.add_root_certificate(certificate);
                    }
                }
                builder.build().map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|reason| FetchError::Unavailable {
                url: self.display_urls(),
                reason: format!("cannot create the HTTP client: {reason}"),
            })
    }

    fn fetch_from(
        &self,
        client: &reqwest::blocking::Client,
        base: &Url,
        path: &str,
        schema: SchemaRef,
    ) -> Result<Plan, FetchError> {
        let unavailable = |reason: String| FetchError::Unavailable {
            url: base.to_string(),
            reason,
        };
        let url = format!("{}/{path}", base.as_str().trim_end_matches('/'));
        let mut request = client.get(&url).header(
            "Accept",
            "application/vnd.schemaregistry.v1+json, application/json",
        );
        request = match &self.config.auth {
            Auth::None => request,
            Auth::Basic { user, password } => request.basic_auth(user, Some(password)),
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::BearerFile(path) => {
                let token = std::fs::read_to_string(path).map_err(|e| {
                    unavailable(format!("cannot read the token file {}: {e}", path.display()))
                })?;
                request.bearer_auth(token.trim())
            }
        };
        // Without the error's source chain reqwest says only "error sending request".
        let response = request.send().map_err(|e| unavailable(error_chain(&e)))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(FetchError::NotFound(schema));
        }
        if !status.is_success() {
            let body = response.text().unwrap_or_default();
            let reason = match status.as_u16() {
                401 | 403 => format!("credentials refused ({status})"),
                _ => format!(
                    "answered {status}: {}",
                    body.chars().take(200).collect::<String>()
                ),
            };
            return Err(unavailable(reason));
        }
        let body = response
            .bytes()
            .map_err(|e| unavailable(format!("reading the answer: {}", error_chain(&e))))?;
        let answer: SchemaResponse = serde_json::from_slice(&body)
            .map_err(|e| unavailable(format!("answered something that is not a schema: {e}")))?;
        let unusable = |reason: String| FetchError::Unusable { schema, reason };
        if let Some(kind) = answer
            .schema_type
            .as_deref()
            .filter(|t| !t.eq_ignore_ascii_case("AVRO"))
        {
            return Err(unusable(format!(
                "it is a {kind} schema and the topic is configured as avro"
            )));
        }
        if !answer.references.is_empty() {
            return Err(unusable(
                "it refers to schemas under other subjects (schema references), which cdc-cache does not resolve".into(),
            ));
        }
        Plan::parse(&answer.schema).map_err(|e| unusable(e.0))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
