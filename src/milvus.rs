//! A typed async client for the Milvus gRPC API (`MilvusService`), written over tonic.
//!
//! Everything Stampede does to a Milvus server goes through [`MilvusClient`]: connect (with
//! optional TLS and credentials), create/describe/drop collections, insert, flush, build and
//! inspect indexes, load/release, search and query. One client holds one HTTP/2 channel; clones
//! share it, and HTTP/2 multiplexes concurrent calls over it.
//!
//! # What goes on the wire
//!
//! Requests are encoded the way pymilvus encodes them (see `milvus-proto-facts.md`): the
//! collection schema travels as serialised bytes, search vectors as a serialised
//! `PlaceholderGroup` (tag `$0`, one little-endian `f32` blob per query), search parameters as
//! string key/value pairs, index parameters in the flat form (`index_type`, `metric_type`, then
//! one pair per build parameter). Every call carries gRPC metadata: `authorization`
//! (`base64("user:password")` or `base64(token)`) when credentials are set, `dbname` when a
//! database other than the default one is selected, and after Connect the `identifier` the
//! server handed out.
//!
//! # Consistency levels in search and query
//!
//! A request names its level and sets `use_default_consistency = false`, so the collection's
//! default is never silently used. The guarantee timestamp follows what the SDKs send and what
//! the proxy expects (`parseGuaranteeTsFromConsistency` in Milvus 2.3):
//!
//! | level | `guarantee_timestamp` | effect on the server |
//! |---|---|---|
//! | Strong | `0` | the proxy allocates a fresh timestamp and waits until the query nodes have caught up to it (~200 ms per search on 2.3.5 standalone) |
//! | Session | the timestamp of this client's last insert into the collection, else `1` | waits only for this client's own writes |
//! | Bounded | `2` | the proxy replaces it with "now minus `common.gracefulTime`" (5 s by default) |
//! | Eventually | `1` | no wait at all |
//!
//! Sending `0` for Strong matters: the proxy (2.3 to 2.6) treats a non-zero timestamp with
//! level Strong (enum value 0) as a literal timestamp from an old client. Servers that predate
//! consistency levels read the timestamp alone (0 = strong, 2 = bounded, 1 = no wait), so the
//! same values mean the same there. Measured on 2.3.5 standalone, HNSW, 500 rows, sequential:
//! Strong 217 ms per search, Session 5.4 ms, Bounded 4.8 ms, Eventually 6.3 ms.
//!
//! # Differences between Milvus versions that this module absorbs
//!
//! - **Status codes.** Milvus 2.3 fills both the legacy `error_code` enum (deprecated) and the
//!   newer numeric `code`; 2.4–2.6 rely on `code` (and `retriable`). A response is treated as a
//!   failure when either is non-zero, and errors are classified from both.
//! - **Collection not found.** Older servers answer with the legacy
//!   `error_code = CollectionNotExists`; 2.3.5 with `error_code = UnexpectedError`, `code = 100`
//!   and a reason starting "can't find collection" (captured); 2.4+ with `code = 100`
//!   "collection not found[...]". All become [`MilvusError::CollectionNotFound`]. (2.3.5's
//!   HasCollection answers `false`, GetLoadState `NotExist`, DropCollection success.)
//! - **Index not found.** Legacy `error_code = IndexNotExist` (25) or `code = 700`: both read as
//!   "no index" in [`MilvusClient::index_progress`] and [`MilvusClient::describe_index`].
//! - **Authentication.** A server with auth enabled refuses bad credentials with the gRPC status
//!   UNAUTHENTICATED; RBAC refusals come as legacy `error_code = PermissionDenied` (3) on 2.3 and
//!   as `code` 1400/1401 (1800 from the REST gateway) on 2.4+. All become
//!   [`MilvusError::Auth`]. A server without auth ignores the `authorization` header.
//! - **Connect.** The `Connect` RPC (which hands out the client identifier) exists in 2.3+; on
//!   older servers that lack it the call is UNIMPLEMENTED and the client falls back to
//!   `GetVersion` (no identifier is sent then). The
//!   version is always read with `GetVersion`, because `Connect`'s `build_tags` is not a version
//!   on every server (milvus-lite answers "milvus_lite").
//! - **Rate limiting.** Legacy `error_code = RateLimit` (49) and `code` 8 (or 4, "request limit
//!   exceeded") are transient; so is anything the server marks `retriable`.
//! - **Index parameters.** 2.3+ accept the flat key/value form sent here, which is what
//!   pymilvus 3.0.2 sends. Older clients sent one `params` JSON pair instead. The
//!   JSON pair is deliberately not sent as well: 2.3.5 accepts it but stores it verbatim as one
//!   more index parameter, and then refuses a later CreateIndex of the same index in the other
//!   form ("at most one distinct index is allowed per field"). [`MilvusClient::describe_index`]
//!   reads both forms back.
//! - **Unloaded collections.** Search and query answer `code` 101 "collection not loaded" on
//!   2.3.5 (a [`MilvusError::Server`] of kind `milvus:101`); [`MilvusClient::row_count`] falls
//!   back to collection statistics for them.
//! - **Dimension errors.** 2.3.5 derives the row count of a vector column from the schema's
//!   dimension, so vectors of the wrong dimension come back as "the num_rows (1) of field
//!   (embedding) is not equal to passed num_rows (2)". The client therefore checks vector
//!   dimensions itself (against a cached DescribeCollection) and reports
//!   [`MilvusError::SchemaMismatch`] with both dimensions; other invalid-parameter answers to
//!   Insert (code 1100 / `error_code` IllegalArgument) also become `SchemaMismatch`.
//!
//! # Retries
//!
//! Control-plane calls retry transient failures ([`MilvusError::is_transient`]) with
//! exponential backoff ([`RetryPolicy`]). Insert retries only failures that prove the rows were
//! not written (rate limiting, no connection), because Milvus does not deduplicate primary
//! keys. Search never retries: the load engine counts every failure itself.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use tonic::Code;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::grpc::FastChannel;
use crate::pb::milvus::common as pbc;
use crate::pb::milvus::schema as pbs;
use crate::pb::milvus::service as pbm;
use crate::pb::milvus::service::milvus_service_client::MilvusServiceClient;

/// The largest message the client sends or accepts. Large query answers exceed tonic's 4 MiB
/// default; the server enforces its own request limit (`proxy.grpc.serverMaxRecvSize`).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The guarantee timestamp meaning "no consistency wait" (pymilvus `EVENTUALLY_TS`).
const EVENTUALLY_TS: u64 = 1;

/// The guarantee timestamp meaning "bounded staleness" (pymilvus `BOUNDED_TS`); 2.3's proxy also
/// recognises it on its own in its legacy path.
const BOUNDED_TS: u64 = 2;

/// How long [`MilvusClient::flush`] waits for the sealed segments to be persisted.
pub const DEFAULT_FLUSH_DEADLINE: Duration = Duration::from_secs(600);

/// How often flush progress is polled (as pymilvus does).
const FLUSH_POLL_INTERVAL: Duration = Duration::from_millis(500);

// Legacy `common.ErrorCode` values this module reacts to.
const EC_PERMISSION_DENIED: i32 = 3;
const EC_COLLECTION_NOT_EXISTS: i32 = 4;
const EC_ILLEGAL_ARGUMENT: i32 = 5;
const EC_ILLEGAL_DIMENSION: i32 = 7;
const EC_INDEX_NOT_EXIST: i32 = 25;
const EC_RATE_LIMIT: i32 = 49;
const EC_NOT_READY_SERVE: i32 = 56;
const EC_SCHEMA_MISMATCH: i32 = 62;

// `merr` codes (Milvus 2.3+ `Status.code`).
const CODE_SERVICE_NOT_READY: i32 = 1;
const CODE_SERVICE_UNAVAILABLE: i32 = 2;
const CODE_REQUEST_LIMIT_EXCEEDED: i32 = 4;
const CODE_RATE_LIMIT: i32 = 8;
const CODE_COLLECTION_NOT_FOUND: i32 = 100;
const CODE_INDEX_NOT_FOUND: i32 = 700;
const CODE_PARAMETER_INVALID: i32 = 1100;
const CODE_NOT_AUTHENTICATED: i32 = 1400;
const CODE_PRIVILEGE_NOT_PERMITTED: i32 = 1401;
const CODE_NEED_AUTHENTICATE: i32 = 1800;
const CODE_HTTP_RATE_LIMIT: i32 = 1807;

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/// How to reach and authenticate to Milvus.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `host:port`, or `http://host:port` / `https://host:port` (`https` turns TLS on).
    pub address: String,
    /// The database; `""` or `"default"` is the default database. Sent as `dbname` metadata and
    /// in the requests' `db_name` fields.
    pub database: String,
    /// TLS settings.
    pub tls: TlsOptions,
    /// Credentials, if the server has authentication enabled.
    pub credentials: Option<Credentials>,
    /// How long establishing the connection may take.
    pub connect_timeout: Duration,
    /// How long one call may take (long operations poll with short calls).
    pub request_timeout: Duration,
    /// Retries of control-plane calls on transient errors.
    pub retry: RetryPolicy,
}

impl ConnectOptions {
    /// Options for `address` with every other setting at its default.
    pub fn new(address: impl Into<String>) -> Self {
        ConnectOptions {
            address: address.into(),
            ..ConnectOptions::default()
        }
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            address: "127.0.0.1:19530".to_string(),
            database: String::new(),
            tls: TlsOptions::default(),
            credentials: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }
}

/// TLS settings of a connection.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Use TLS (also implied by an `https://` address).
    pub enabled: bool,
    /// A PEM CA bundle to trust instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The name to verify the server certificate against, when it differs from the host.
    pub server_name: Option<String>,
}

/// Credentials Milvus accepts.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user and password (sent as `base64("user:password")`).
    UserPassword {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// An API key or `user:password` token (sent as `base64(token)`).
    Token(String),
}

impl fmt::Debug for Credentials {
    // Never print secrets, not even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::UserPassword { username, .. } => f
                .debug_struct("UserPassword")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Token(_) => f.debug_tuple("Token").field(&"<redacted>").finish(),
        }
    }
}

impl Credentials {
    /// The value of the `authorization` metadata Milvus expects.
    pub fn authorization_header(&self) -> String {
        match self {
            Credentials::UserPassword { username, password } => {
                base64_encode(format!("{username}:{password}").as_bytes())
            }
            Credentials::Token(token) => base64_encode(token.as_bytes()),
        }
    }
}

/// Retries of control-plane calls: exponential backoff, transient errors only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retry).
    pub attempts: u32,
    /// The pause before the first retry; it doubles for each further retry.
    pub initial_backoff: Duration,
    /// The longest pause between two attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// A policy that makes one attempt only.
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The pause before retry number `retry` (1-based).
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

// ---------------------------------------------------------------------------------------------
// Public data types
// ---------------------------------------------------------------------------------------------

/// How fresh the data a search or query sees must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsistencyLevel {
    /// Sees every write acknowledged before the request (waits for the time tick).
    Strong,
    /// Sees this client's own writes.
    Session,
    /// Sees data at most `common.gracefulTime` (5 s) old; Milvus's default.
    Bounded,
    /// No freshness guarantee, no wait.
    Eventually,
}

impl ConsistencyLevel {
    fn to_proto(self) -> pbc::ConsistencyLevel {
        match self {
            ConsistencyLevel::Strong => pbc::ConsistencyLevel::Strong,
            ConsistencyLevel::Session => pbc::ConsistencyLevel::Session,
            ConsistencyLevel::Bounded => pbc::ConsistencyLevel::Bounded,
            ConsistencyLevel::Eventually => pbc::ConsistencyLevel::Eventually,
        }
    }

    fn from_proto(value: i32) -> Option<Self> {
        match pbc::ConsistencyLevel::try_from(value).ok()? {
            pbc::ConsistencyLevel::Strong => Some(ConsistencyLevel::Strong),
            pbc::ConsistencyLevel::Session => Some(ConsistencyLevel::Session),
            pbc::ConsistencyLevel::Bounded => Some(ConsistencyLevel::Bounded),
            pbc::ConsistencyLevel::Eventually => Some(ConsistencyLevel::Eventually),
            pbc::ConsistencyLevel::Customized => None,
        }
    }
}

impl fmt::Display for ConsistencyLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConsistencyLevel::Strong => "Strong",
            ConsistencyLevel::Session => "Session",
            ConsistencyLevel::Bounded => "Bounded",
            ConsistencyLevel::Eventually => "Eventually",
        })
    }
}

/// Whether a collection is loaded into query nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoadState {
    /// The collection does not exist.
    NotExist,
    /// Not loaded (searches fail).
    NotLoad,
    /// Loading in progress.
    Loading,
    /// Loaded and searchable.
    Loaded,
}

/// A collection schema to create.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionSchemaDef {
    /// The collection name.
    pub name: String,
    /// A free-text description stored with the collection.
    pub description: String,
    /// The fields, primary key included.
    pub fields: Vec<FieldDef>,
}

/// One field of a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDef {
    /// The field name.
    pub name: String,
    /// Its type.
    pub field_type: FieldType,
    /// Whether it is the primary key.
    pub primary_key: bool,
    /// Whether Milvus assigns the primary key values.
    pub auto_id: bool,
}

/// The field types this client creates, inserts and reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// `BOOL`.
    Bool,
    /// `INT32`.
    Int32,
    /// `INT64`.
    Int64,
    /// `FLOAT`.
    Float,
    /// `DOUBLE`.
    Double,
    /// `VARCHAR` with its maximum length in bytes.
    VarChar {
        /// Maximum length in bytes.
        max_length: u32,
    },
    /// `FLOAT_VECTOR` with its dimension.
    FloatVector {
        /// Number of components.
        dim: u32,
    },
    /// A type found on an existing collection that this client cannot create or insert (JSON,
    /// binary vectors, INT8, ...). Only [`MilvusClient::describe_collection`] returns it.
    Unsupported {
        /// Milvus's name of the type.
        type_name: String,
    },
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldType::Bool => f.write_str("BOOL"),
            FieldType::Int32 => f.write_str("INT32"),
            FieldType::Int64 => f.write_str("INT64"),
            FieldType::Float => f.write_str("FLOAT"),
            FieldType::Double => f.write_str("DOUBLE"),
            FieldType::VarChar { max_length } => write!(f, "VARCHAR(max_length={max_length})"),
            FieldType::FloatVector { dim } => write!(f, "FLOAT_VECTOR(dim={dim})"),
            FieldType::Unsupported { type_name } => write!(f, "{type_name} (unsupported)"),
        }
    }
}

impl FieldType {
    fn to_schema(
        &self,
        field: &str,
    ) -> Result<(pbs::DataType, Vec<pbc::KeyValuePair>), MilvusError> {
        Ok(match self {
            FieldType::Bool => (pbs::DataType::Bool, Vec::new()),
            FieldType::Int32 => (pbs::DataType::Int32, Vec::new()),
            FieldType::Int64 => (pbs::DataType::Int64, Vec::new()),
            FieldType::Float => (pbs::DataType::Float, Vec::new()),
            FieldType::Double => (pbs::DataType::Double, Vec::new()),
            FieldType::VarChar { max_length } => (
                pbs::DataType::VarChar,
                vec![kv("max_length", max_length.to_string())],
            ),
            FieldType::FloatVector { dim } => {
                (pbs::DataType::FloatVector, vec![kv("dim", dim.to_string())])
            }
            FieldType::Unsupported { type_name } => {
                return Err(MilvusError::InvalidArgument(format!(
                    "field `{field}` has type {type_name}, which this client cannot create"
                )));
            }
        })
    }

    fn from_schema(field: &pbs::FieldSchema) -> FieldType {
        let param = |key: &str| -> u32 {
            field
                .type_params
                .iter()
                .find(|p| p.key == key)
                .and_then(|p| p.value.trim().parse().ok())
                .unwrap_or(0)
        };
        match pbs::DataType::try_from(field.data_type) {
            Ok(pbs::DataType::Bool) => FieldType::Bool,
            Ok(pbs::DataType::Int32) => FieldType::Int32,
            Ok(pbs::DataType::Int64) => FieldType::Int64,
            Ok(pbs::DataType::Float) => FieldType::Float,
            Ok(pbs::DataType::Double) => FieldType::Double,
            Ok(pbs::DataType::VarChar) => FieldType::VarChar {
                max_length: param("max_length"),
            },
            Ok(pbs::DataType::FloatVector) => FieldType::FloatVector { dim: param("dim") },
            Ok(other) => FieldType::Unsupported {
                type_name: other.as_str_name().to_string(),
            },
            Err(_) => FieldType::Unsupported {
                type_name: format!("DataType({})", field.data_type),
            },
        }
    }
}

/// What [`MilvusClient::describe_collection`] reports.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionInfo {
    /// The collection name.
    pub name: String,
    /// Milvus's internal id.
    pub collection_id: i64,
    /// The description given at creation.
    pub description: String,
    /// The fields, in schema order.
    pub fields: Vec<FieldDef>,
    /// Number of shards (virtual channels).
    pub shards: i32,
    /// The collection's default consistency level (None: "Customized" or unknown).
    pub consistency: Option<ConsistencyLevel>,
    /// Whether Milvus assigns primary keys.
    pub auto_id: bool,
}

/// One column of rows, as inserted or returned by a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// `INT64` values.
    Int64 {
        /// The field name.
        name: String,
        /// One value per row.
        data: Vec<i64>,
    },
    /// `INT32` values (INT8/INT16 results also arrive in this form).
    Int32 {
        /// The field name.
        name: String,
        /// One value per row.
        data: Vec<i32>,
    },
    /// `FLOAT` values.
    Float {
        /// The field name.
        name: String,
        /// One value per row.
        data: Vec<f32>,
    },
    /// `DOUBLE` values.
    Double {
        /// The field name.
        name: String,
        /// One value per row.
        data: Vec<f64>,
    },
    /// `BOOL` values.
    Bool {
        /// The field name.
        name: String,
        /// One value per row.
        data: Vec<bool>,
    },
    /// `VARCHAR` values.
    VarChar {
        /// The field name.
        name: String,
        /// One value per row.
        data: Vec<String>,
    },
    /// `FLOAT_VECTOR` values, row-major (`rows × dim` floats).
    FloatVector {
        /// The field name.
        name: String,
        /// Components per vector.
        dim: u32,
        /// All vectors, one after the other.
        data: Vec<f32>,
    },
}

impl Column {
    /// The field name.
    pub fn name(&self) -> &str {
        match self {
            Column::Int64 { name, .. }
            | Column::Int32 { name, .. }
            | Column::Float { name, .. }
            | Column::Double { name, .. }
            | Column::Bool { name, .. }
            | Column::VarChar { name, .. }
            | Column::FloatVector { name, .. } => name,
        }
    }

    /// The number of rows (for vectors: floats / dim, rounded down).
    pub fn len(&self) -> usize {
        match self {
            Column::Int64 { data, .. } => data.len(),
            Column::Int32 { data, .. } => data.len(),
            Column::Float { data, .. } => data.len(),
            Column::Double { data, .. } => data.len(),
            Column::Bool { data, .. } => data.len(),
            Column::VarChar { data, .. } => data.len(),
            Column::FloatVector { dim, data, .. } => match *dim {
                0 => 0,
                d => data.len() / d as usize,
            },
        }
    }

    /// Whether the column holds no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn to_field_data(&self) -> pbs::FieldData {
        use pbs::scalar_field::Data as S;
        let scalar = |data_type: pbs::DataType, name: &str, data: S| pbs::FieldData {
            r#type: data_type as i32,
            field_name: name.to_string(),
            field: Some(pbs::field_data::Field::Scalars(pbs::ScalarField {
                data: Some(data),
            })),
            field_id: 0,
        };
        match self {
            Column::Int64 { name, data } => scalar(
                pbs::DataType::Int64,
                name,
                S::LongData(pbs::LongArray { data: data.clone() }),
            ),
            Column::Int32 { name, data } => scalar(
                pbs::DataType::Int32,
                name,
                S::IntData(pbs::IntArray { data: data.clone() }),
            ),
            Column::Float { name, data } => scalar(
                pbs::DataType::Float,
                name,
                S::FloatData(pbs::FloatArray { data: data.clone() }),
            ),
            Column::Double { name, data } => scalar(
                pbs::DataType::Double,
                name,
                S::DoubleData(pbs::DoubleArray { data: data.clone() }),
            ),
            Column::Bool { name, data } => scalar(
                pbs::DataType::Bool,
                name,
                S::BoolData(pbs::BoolArray { data: data.clone() }),
            ),
            Column::VarChar { name, data } => scalar(
                pbs::DataType::VarChar,
                name,
                S::StringData(pbs::StringArray { data: data.clone() }),
            ),
            Column::FloatVector { name, dim, data } => pbs::FieldData {
                r#type: pbs::DataType::FloatVector as i32,
                field_name: name.clone(),
                field: Some(pbs::field_data::Field::Vectors(pbs::VectorField {
                    dim: i64::from(*dim),
                    data: Some(pbs::vector_field::Data::FloatVector(pbs::FloatArray {
                        data: data.clone(),
                    })),
                })),
                field_id: 0,
            },
        }
    }

    /// The column a result's field data holds, or None for a type this client does not read.
    fn from_field_data(field: pbs::FieldData) -> Option<Column> {
        use pbs::scalar_field::Data as S;
        let name = field.field_name;
        match field.field? {
            pbs::field_data::Field::Scalars(scalars) => Some(match scalars.data? {
                S::LongData(a) => Column::Int64 { name, data: a.data },
                S::IntData(a) => Column::Int32 { name, data: a.data },
                S::FloatData(a) => Column::Float { name, data: a.data },
                S::DoubleData(a) => Column::Double { name, data: a.data },
                S::BoolData(a) => Column::Bool { name, data: a.data },
                S::StringData(a) => Column::VarChar { name, data: a.data },
            }),
            pbs::field_data::Field::Vectors(vectors) => match vectors.data? {
                pbs::vector_field::Data::FloatVector(a) => Some(Column::FloatVector {
                    name,
                    dim: u32::try_from(vectors.dim).unwrap_or(0),
                    data: a.data,
                }),
                pbs::vector_field::Data::BinaryVector(_) => None,
            },
        }
    }
}

/// An index to build.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexDef {
    /// Index type as Milvus names it (`HNSW`, `IVF_FLAT`, `AUTOINDEX`, ...).
    pub index_type: String,
    /// Metric (`L2`, `IP`, `COSINE`).
    pub metric_type: String,
    /// Build parameters as strings (`M` → `16`).
    pub params: BTreeMap<String, String>,
    /// The index name ("" lets Milvus choose).
    pub index_name: String,
}

/// The build state of an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexState {
    /// No state reported.
    None,
    /// Not started yet.
    Unissued,
    /// Building.
    InProgress,
    /// Built for every sealed segment.
    Finished,
    /// The build failed (see the fail reason).
    Failed,
    /// Being retried after a failure.
    Retry,
}

impl IndexState {
    fn from_proto(value: i32) -> Self {
        match pbc::IndexState::try_from(value) {
            Ok(pbc::IndexState::Unissued) => IndexState::Unissued,
            Ok(pbc::IndexState::InProgress) => IndexState::InProgress,
            Ok(pbc::IndexState::Finished) => IndexState::Finished,
            Ok(pbc::IndexState::Failed) => IndexState::Failed,
            Ok(pbc::IndexState::Retry) => IndexState::Retry,
            Ok(pbc::IndexState::None) | Err(_) => IndexState::None,
        }
    }
}

/// How far an index build has come ([`MilvusClient::index_progress`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexProgress {
    /// The index name.
    pub index_name: String,
    /// The build state.
    pub state: IndexState,
    /// Rows covered by the index.
    pub indexed_rows: u64,
    /// Rows in sealed segments that the index must cover.
    pub total_rows: u64,
    /// Rows still waiting to be indexed (0 from servers that do not report it).
    pub pending_index_rows: u64,
    /// Why the build failed, if it did.
    pub fail_reason: String,
}

impl IndexProgress {
    /// Whether the index is built.
    pub fn finished(&self) -> bool {
        self.state == IndexState::Finished
    }

    /// Whether the build failed.
    pub fn failed(&self) -> bool {
        self.state == IndexState::Failed
    }
}

/// An existing index ([`MilvusClient::describe_index`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexInfo {
    /// The index name.
    pub index_name: String,
    /// The indexed field.
    pub field_name: String,
    /// Index type (`HNSW`, ...).
    pub index_type: String,
    /// Metric (`L2`, ...); empty if the server did not report it.
    pub metric_type: String,
    /// The build parameters, without `index_type` and `metric_type`.
    pub params: BTreeMap<String, String>,
}

/// Rows returned by [`MilvusClient::query`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryRows {
    /// One column per output field (fields of types this client cannot read are left out).
    pub columns: Vec<Column>,
    /// The number of rows.
    pub rows: usize,
}

impl QueryRows {
    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name() == name)
    }
}

/// The hits of a search: per query, ids and scores best first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchHits {
    /// Number of queries.
    pub nq: usize,
    /// Per query, the ids of the hits.
    pub ids: Vec<Vec<i64>>,
    /// Per query, the scores (for L2: squared distances) in the same order.
    pub scores: Vec<Vec<f32>>,
}

/// A search prepared once and sent many times: everything but the vectors and the filter is
/// encoded up front, so the hot loop of a load generator only encodes the vectors.
#[derive(Debug, Clone)]
pub struct SearchTemplate {
    collection: String,
    vector_field: String,
    metric: String,
    top_k: usize,
    params_json: String,
    output_fields: Vec<String>,
    consistency: ConsistencyLevel,
    search_params: Vec<pbc::KeyValuePair>,
    /// The protobuf encoding of the request's constant fields (collection, DSL type, output
    /// fields, search parameters, consistency level), written as is before each request's own
    /// fields by the lean transport.
    encoded: bytes::Bytes,
}

impl SearchTemplate {
    /// A search of `top_k` neighbours on `vector_field` with index-specific `params` (such as
    /// `{"ef": 64}`), returning `output_fields`, at consistency level `consistency`.
    pub fn new(
        collection: impl Into<String>,
        vector_field: impl Into<String>,
        metric: &str,
        top_k: usize,
        params: &serde_json::Map<String, serde_json::Value>,
        output_fields: Vec<String>,
        consistency: ConsistencyLevel,
    ) -> Self {
        let vector_field = vector_field.into();
        // serde_json cannot fail to print a Map of Values.
        let params_json = serde_json::Value::Object(params.clone()).to_string();
        // The same pairs and string forms pymilvus sends (Python's str(False) is "False").
        let search_params = vec![
            kv("topk", top_k.to_string()),
            kv("params", params_json.clone()),
            kv("round_decimal", "-1".to_string()),
            kv("ignore_growing", "False".to_string()),
            kv("metric_type", metric.to_string()),
            kv("anns_field", vector_field.clone()),
        ];
        let collection = collection.into();
        let encoded = pbm::SearchRequest {
            collection_name: collection.clone(),
            dsl_type: pbc::DslType::BoolExprV1 as i32,
            output_fields: output_fields.clone(),
            search_params: search_params.clone(),
            consistency_level: consistency.to_proto() as i32,
            ..Default::default()
        }
        .encode_to_vec()
        .into();
        SearchTemplate {
            collection,
            vector_field,
            metric: metric.to_string(),
            top_k,
            params_json,
            output_fields,
            consistency,
            search_params,
            encoded,
        }
    }

    /// The collection searched.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// The vector field searched.
    pub fn vector_field(&self) -> &str {
        &self.vector_field
    }

    /// The metric.
    pub fn metric(&self) -> &str {
        &self.metric
    }

    /// Neighbours per query.
    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// The search parameters as sent (`{"ef":64}`).
    pub fn params_json(&self) -> &str {
        &self.params_json
    }

    /// The consistency level.
    pub fn consistency(&self) -> ConsistencyLevel {
        self.consistency
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Everything that can go wrong talking to Milvus.
#[derive(Debug, thiserror::Error)]
pub enum MilvusError {
    /// The server could not be reached.
    #[error("cannot reach Milvus at {address}: {reason}")]
    Connect {
        /// The address tried.
        address: String,
        /// What failed, with a hint.
        reason: String,
    },
    /// The server refused the credentials or the user lacks a privilege.
    #[error(
        "Milvus refused the credentials: {reason} (check the username and password or the token; a server without authentication needs none)"
    )]
    Auth {
        /// Milvus's message.
        reason: String,
    },
    /// The collection does not exist.
    #[error(
        "collection `{name}` does not exist in Milvus (check the collection name and the database)"
    )]
    CollectionNotFound {
        /// The collection name.
        name: String,
    },
    /// Data or schema do not match the collection.
    #[error("the data does not match the collection schema: {reason}")]
    SchemaMismatch {
        /// What does not match.
        reason: String,
    },
    /// Milvus answered with an error status.
    #[error("Milvus rejected {method}: {reason} (code {code}, error_code {error_code})")]
    Server {
        /// The RPC.
        method: &'static str,
        /// `Status.code` (0 on servers before 2.3).
        code: i32,
        /// The legacy `Status.error_code`.
        error_code: i32,
        /// Milvus's message.
        reason: String,
        /// Whether Milvus marked the error retriable.
        retriable: bool,
    },
    /// A call got no answer in time.
    #[error(
        "Milvus did not answer {method} within {after:?} (is the server overloaded? a longer request timeout may help)"
    )]
    Timeout {
        /// The RPC (or long operation).
        method: &'static str,
        /// The time waited.
        after: Duration,
    },
    /// The gRPC call failed below Milvus (connection lost, protocol error, ...).
    #[error("gRPC call {method} failed with {}: {}{}", grpc_code_name(.status.code()), .status.message(), transport_hint(.status.code()))]
    Transport {
        /// The RPC.
        method: &'static str,
        /// The gRPC status.
        #[source]
        status: tonic::Status,
    },
    /// The request is invalid before it is sent.
    #[error("invalid Milvus request: {0}")]
    InvalidArgument(String),
}

impl MilvusError {
    /// Whether the same call may succeed if tried again later (connection lost, server not ready,
    /// rate limited, or an error Milvus marks retriable).
    pub fn is_transient(&self) -> bool {
        match self {
            MilvusError::Transport { status, .. } => match status.code() {
                Code::Unavailable => true,
                Code::Unknown | Code::Internal | Code::Cancelled => {
                    let message = status.message().to_ascii_lowercase();
                    [
                        "connection reset",
                        "broken pipe",
                        "connection closed",
                        "reset by peer",
                        "goaway",
                        "go away",
                    ]
                    .iter()
                    .any(|needle| message.contains(needle))
                }
                _ => false,
            },
            MilvusError::Server {
                code,
                error_code,
                retriable,
                ..
            } => {
                *retriable
                    || matches!(*error_code, EC_RATE_LIMIT | EC_NOT_READY_SERVE)
                    || matches!(
                        *code,
                        CODE_SERVICE_NOT_READY
                            | CODE_SERVICE_UNAVAILABLE
                            | CODE_REQUEST_LIMIT_EXCEEDED
                            | CODE_RATE_LIMIT
                            | CODE_HTTP_RATE_LIMIT
                    )
            }
            _ => false,
        }
    }

    /// Whether the error proves the request was not carried out, so that even a non-idempotent
    /// call (insert) may be sent again: rate limiting, a server not ready yet, or a connection
    /// that could not be established.
    fn proves_not_applied(&self) -> bool {
        match self {
            MilvusError::Server {
                code, error_code, ..
            } => {
                matches!(*error_code, EC_RATE_LIMIT | EC_NOT_READY_SERVE)
                    || matches!(
                        *code,
                        CODE_SERVICE_NOT_READY
                            | CODE_REQUEST_LIMIT_EXCEEDED
                            | CODE_RATE_LIMIT
                            | CODE_HTTP_RATE_LIMIT
                    )
            }
            MilvusError::Transport { status, .. } => {
                status.code() == Code::Unavailable && source_chain_has_connect_error(status)
            }
            _ => false,
        }
    }

    /// A short stable label for grouping failures in reports: `connect`, `auth`,
    /// `collection_not_found`, `schema_mismatch`, `milvus:<code>` (or `milvus:error_code:<n>`
    /// from servers that only set the legacy code), `timeout`, `grpc:<STATUS>`,
    /// `invalid_argument`.
    pub fn kind(&self) -> String {
        match self {
            MilvusError::Connect { .. } => "connect".to_string(),
            MilvusError::Auth { .. } => "auth".to_string(),
            MilvusError::CollectionNotFound { .. } => "collection_not_found".to_string(),
            MilvusError::SchemaMismatch { .. } => "schema_mismatch".to_string(),
            MilvusError::Server {
                code, error_code, ..
            } => {
                if *code != 0 {
                    format!("milvus:{code}")
                } else {
                    format!("milvus:error_code:{error_code}")
                }
            }
            MilvusError::Timeout { .. } => "timeout".to_string(),
            MilvusError::Transport { status, .. } => {
                format!("grpc:{}", grpc_code_name(status.code()))
            }
            MilvusError::InvalidArgument(_) => "invalid_argument".to_string(),
        }
    }

    /// Converts a failed gRPC call.
    fn from_grpc(method: &'static str, status: tonic::Status, timeout: Duration) -> Self {
        match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => MilvusError::Auth {
                reason: status.message().to_string(),
            },
            Code::DeadlineExceeded => MilvusError::Timeout {
                method,
                after: timeout,
            },
            // tonic's own deadline (from the grpc-timeout header) surfaces as CANCELLED.
            Code::Cancelled if status.message() == "Timeout expired" => MilvusError::Timeout {
                method,
                after: timeout,
            },
            _ => MilvusError::Transport { method, status },
        }
    }
}

/// The canonical name of a gRPC status code.
fn grpc_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn transport_hint(code: Code) -> &'static str {
    match code {
        Code::Unavailable => " (the connection to Milvus failed or was lost; is the server up?)",
        Code::Unimplemented => {
            " (this Milvus version does not offer the call; is it older than 2.3?)"
        }
        Code::ResourceExhausted => " (a message exceeded the size limit; send smaller batches)",
        _ => "",
    }
}

fn source_chain_has_connect_error(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Every message of an error's source chain, without repeats, joined by ": ".
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// A user-facing reason for a failed connection attempt.
fn describe_connect_failure(err: &(dyn std::error::Error + 'static), tls: bool) -> String {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return "connection refused (is it running? see README \"Local Milvus\")"
                        .to_string();
                }
                std::io::ErrorKind::TimedOut => {
                    return "connection timed out (is the address right and the port open?)"
                        .to_string();
                }
                _ => {}
            }
        }
        current = e.source();
    }
    with_connect_hint(error_chain(err), tls)
}

/// A user-facing reason for a gRPC status received while connecting.
fn describe_connect_status(status: &tonic::Status, tls: bool) -> String {
    match std::error::Error::source(status) {
        Some(source) => describe_connect_failure(source, tls),
        None => with_connect_hint(status.message().to_string(), tls),
    }
}

fn with_connect_hint(chain: String, tls: bool) -> String {
    let lower = chain.to_ascii_lowercase();
    if lower.contains("timed out") || lower.contains("elapsed") {
        "connection timed out (is the address right and the port reachable?)".to_string()
    } else if lower.contains("dns") || lower.contains("lookup") || lower.contains("resolve") {
        format!("{chain} (is the host name right?)")
    } else if lower.contains("http status code") {
        format!(
            "{chain} (something answers there, but not Milvus's gRPC API; is this the gRPC port, usually 19530?)"
        )
    } else if tls {
        format!(
            "{chain} (TLS is on: does the server use TLS, and do the CA certificate and server name match?)"
        )
    } else {
        format!(
            "{chain} (is this Milvus's gRPC port, usually 19530? if the server requires TLS, enable it)"
        )
    }
}

/// Classifies a Milvus status; `Ok` when it reports success.
fn check_status(
    method: &'static str,
    collection: Option<&str>,
    status: Option<&pbc::Status>,
) -> Result<(), MilvusError> {
    let Some(status) = status else {
        // proto3 leaves an all-default (success) status out of some answers.
        return Ok(());
    };
    if status.code == 0 && status.error_code == 0 {
        return Ok(());
    }
    Err(status_error(method, collection, status))
}

fn status_error(
    method: &'static str,
    collection: Option<&str>,
    status: &pbc::Status,
) -> MilvusError {
    let reason = if status.reason.is_empty() {
        status.detail.clone()
    } else {
        status.reason.clone()
    };
    let lower = reason.to_ascii_lowercase();
    let not_found = status.code == CODE_COLLECTION_NOT_FOUND
        || status.error_code == EC_COLLECTION_NOT_EXISTS
        || lower.contains("can't find collection")
        || lower.contains("collection not found");
    if not_found && let Some(name) = collection {
        return MilvusError::CollectionNotFound {
            name: name.to_string(),
        };
    }
    if matches!(
        status.code,
        CODE_NOT_AUTHENTICATED | CODE_PRIVILEGE_NOT_PERMITTED | CODE_NEED_AUTHENTICATE
    ) || status.error_code == EC_PERMISSION_DENIED
    {
        return MilvusError::Auth { reason };
    }
    // On Insert, an invalid parameter is the data disagreeing with the schema (missing field,
    // wrong length, wrong type): 2.3 reports it as IllegalArgument / code 1100.
    if matches!(status.error_code, EC_ILLEGAL_DIMENSION | EC_SCHEMA_MISMATCH)
        || (method == "Insert"
            && (status.error_code == EC_ILLEGAL_ARGUMENT
                || status.code == CODE_PARAMETER_INVALID
                || lower.contains("dim")
                || lower.contains("schema")))
    {
        return MilvusError::SchemaMismatch { reason };
    }
    MilvusError::Server {
        method,
        code: status.code,
        error_code: status.error_code,
        reason,
        retriable: status.retriable,
    }
}

fn is_index_not_found(status: Option<&pbc::Status>) -> bool {
    status.is_some_and(|s| {
        s.code == CODE_INDEX_NOT_FOUND
            || s.error_code == EC_INDEX_NOT_EXIST
            || s.reason.to_ascii_lowercase().contains("index not found")
            || s.reason
                .to_ascii_lowercase()
                .contains("index doesn't exist")
    })
}

// ---------------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------------

/// Whether a call may be repeated after an ambiguous failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idempotency {
    /// Repeating it has no extra effect (DDL, reads, flush).
    Safe,
    /// Repeating it after the server applied it would duplicate data (insert).
    Unsafe,
}

/// Runs `op` until it succeeds, fails with an error that is not worth retrying, or has used
/// `policy.attempts` attempts; waits with exponential backoff between attempts.
async fn with_retry<T, F, Fut>(
    policy: &RetryPolicy,
    method: &'static str,
    idempotency: Idempotency,
    mut op: F,
) -> Result<T, MilvusError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, MilvusError>>,
{
    let attempts = policy.attempts.max(1);
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(err) => {
                let retryable = match idempotency {
                    Idempotency::Safe => err.is_transient(),
                    Idempotency::Unsafe => err.proves_not_applied(),
                };
                if !retryable || attempt >= attempts {
                    return Err(err);
                }
                let pause = policy.backoff(attempt);
                tracing::warn!(
                    method,
                    attempt,
                    of = attempts,
                    kind = %err.kind(),
                    error = %err,
                    retry_in_ms = pause.as_millis() as u64,
                    "transient Milvus error; retrying"
                );
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata (auth, database, identifier)
// ---------------------------------------------------------------------------------------------

/// Adds the same metadata to every request (the header values are prebuilt and cheap to clone).
#[derive(Clone)]
struct MetadataInterceptor {
    headers: Arc<Vec<(AsciiMetadataKey, AsciiMetadataValue)>>,
}

impl MetadataInterceptor {
    fn new(
        credentials: Option<&Credentials>,
        database: &str,
        identifier: Option<i64>,
    ) -> Result<Self, MilvusError> {
        let mut headers = Vec::new();
        let key = |k: &str| {
            AsciiMetadataKey::from_bytes(k.as_bytes())
                .map_err(|e| MilvusError::InvalidArgument(format!("metadata key {k}: {e}")))
        };
        if let Some(credentials) = credentials {
            let mut value = AsciiMetadataValue::try_from(credentials.authorization_header())
                .map_err(|e| MilvusError::InvalidArgument(format!("credentials: {e}")))?;
            value.set_sensitive(true);
            headers.push((key("authorization")?, value));
        }
        if !database.is_empty() {
            let value = AsciiMetadataValue::try_from(database.to_string()).map_err(|_| {
                MilvusError::InvalidArgument(format!(
                    "database name `{database}` must be ASCII letters, digits and underscores"
                ))
            })?;
            headers.push((key("dbname")?, value));
        }
        if let Some(id) = identifier.filter(|&id| id != 0) {
            let value = AsciiMetadataValue::try_from(id.to_string())
                .map_err(|e| MilvusError::InvalidArgument(format!("identifier: {e}")))?;
            headers.push((key("identifier")?, value));
        }
        Ok(MetadataInterceptor {
            headers: Arc::new(headers),
        })
    }
}

impl Interceptor for MetadataInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        for (key, value) in self.headers.iter() {
            metadata.insert(key.clone(), value.clone());
        }
        Ok(request)
    }
}

/// Standard base64 (RFC 4648, with padding), as Milvus decodes the `authorization` header.
pub fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 0x3f) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Responses that carry a status
// ---------------------------------------------------------------------------------------------

/// A response with a Milvus status to check.
trait WithStatus {
    fn status(&self) -> Option<&pbc::Status>;
}

impl WithStatus for pbc::Status {
    fn status(&self) -> Option<&pbc::Status> {
        Some(self)
    }
}

macro_rules! with_status {
    ($($t:ty),* $(,)?) => {
        $(impl WithStatus for $t {
            fn status(&self) -> Option<&pbc::Status> {
                self.status.as_ref()
            }
        })*
    };
}

with_status!(
    pbm::ConnectResponse,
    pbm::GetVersionResponse,
    pbm::CheckHealthResponse,
    pbm::DescribeCollectionResponse,
    pbm::BoolResponse,
    pbm::GetCollectionStatisticsResponse,
    pbm::MutationResult,
    pbm::FlushResponse,
    pbm::GetFlushStateResponse,
    pbm::DescribeIndexResponse,
    pbm::GetLoadStateResponse,
    pbm::GetLoadingProgressResponse,
    pbm::SearchResults,
    pbm::QueryResults,
);

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

type Grpc = MilvusServiceClient<InterceptedService<Channel, MetadataInterceptor>>;

/// A connected Milvus client. Cheap to clone: clones share one HTTP/2 channel.
#[derive(Clone)]
pub struct MilvusClient {
    grpc: Grpc,
    /// The lean HTTP/2 transport of the load's calls (Search, Query); `None` over TLS, where
    /// they go through tonic like every other call.
    fast: Option<Arc<FastChannel>>,
    /// How long one call may take.
    request_timeout: Duration,
    shared: Arc<Shared>,
}

struct Shared {
    address: String,
    database: String,
    retry: RetryPolicy,
    server_version: String,
    identifier: i64,
    /// Per collection, the timestamp of this client's last insert (for Session consistency).
    last_write: Mutex<HashMap<String, u64>>,
    /// Per collection, the dimension of each vector field, read once with DescribeCollection so
    /// that inserts of the wrong dimension fail with a clear message (2.3.5 itself only reports
    /// a confusing row-count mismatch).
    vector_dims: Mutex<HashMap<String, HashMap<String, u32>>>,
}

impl fmt::Debug for MilvusClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MilvusClient")
            .field("address", &self.shared.address)
            .field("database", &self.shared.database)
            .field("server_version", &self.shared.server_version)
            .finish()
    }
}

/// Where to connect: the URI for tonic and whether TLS is on.
struct Target {
    uri: String,
    tls: bool,
}

impl Target {
    fn parse(address: &str, tls_enabled: bool) -> Result<Target, MilvusError> {
        let address = address.trim();
        let (rest, tls) = if let Some(rest) = address.strip_prefix("https://") {
            (rest, true)
        } else if let Some(rest) = address.strip_prefix("http://") {
            (rest, tls_enabled)
        } else if address.contains("://") {
            return Err(MilvusError::InvalidArgument(format!(
                "`{address}` is not a Milvus address: use host:port, http://host:port or https://host:port"
            )));
        } else {
            (address, tls_enabled)
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() {
            return Err(MilvusError::InvalidArgument(
                "the Milvus address is empty: use host:port, e.g. 127.0.0.1:19530".to_string(),
            ));
        }
        let scheme = if tls { "https" } else { "http" };
        Ok(Target {
            uri: format!("{scheme}://{rest}"),
            tls,
        })
    }
}

fn kv(key: &str, value: String) -> pbc::KeyValuePair {
    pbc::KeyValuePair {
        key: key.to_string(),
        value,
    }
}

fn make_grpc(channel: Channel, interceptor: MetadataInterceptor) -> Grpc {
    MilvusServiceClient::with_interceptor(channel, interceptor)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// gRPC paths of the calls that go over the lean transport.
const SEARCH_PATH: &str = "/milvus.proto.milvus.MilvusService/Search";
const QUERY_PATH: &str = "/milvus.proto.milvus.MilvusService/Query";

/// The lean transport for the load's calls (see `grpc.rs`), when the target is plain HTTP/2
/// with an explicit port; `STAMPEDE_TRANSPORT=tonic` keeps every call on tonic. It connects on
/// first use (or [`MilvusClient::warm_up`]), so clients that never search open no second
/// connection.
fn lean_channel(
    target: &Target,
    interceptor: &MetadataInterceptor,
    connect_timeout: Duration,
) -> Option<Arc<FastChannel>> {
    if target.tls || std::env::var("STAMPEDE_TRANSPORT").is_ok_and(|v| v.trim() == "tonic") {
        return None;
    }
    let authority = target.uri.strip_prefix("http://")?;
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    if !has_port {
        return None;
    }
    let mut metadata = http::HeaderMap::new();
    for (key, value) in interceptor.headers.iter() {
        let name = http::HeaderName::from_bytes(key.as_str().as_bytes()).ok()?;
        let mut value = http::HeaderValue::from_bytes(value.as_encoded_bytes()).ok()?;
        value.set_sensitive(true);
        metadata.insert(name, value);
    }
    FastChannel::new(authority, metadata, MAX_MESSAGE_BYTES, connect_timeout).ok()
}

fn normalise_database(database: &str) -> String {
    let database = database.trim();
    if database.is_empty() || database == "default" {
        String::new()
    } else {
        database.to_string()
    }
}

impl MilvusClient {
    /// Connects (really: the TCP/TLS/HTTP2 connection is made here, within
    /// `opts.connect_timeout`), calls Connect (or GetVersion on servers without it) and records
    /// the server version and the identifier sent with later calls.
    pub async fn connect(opts: ConnectOptions) -> Result<Self, MilvusError> {
        let target = Target::parse(&opts.address, opts.tls.enabled)?;
        let address = opts.address.trim().to_string();
        let database = normalise_database(&opts.database);
        let mut endpoint = Endpoint::from_shared(target.uri.clone())
            .map_err(|e| {
                MilvusError::InvalidArgument(format!(
                    "`{address}` is not a valid Milvus address ({}); use host:port",
                    error_chain(&e)
                ))
            })?
            .connect_timeout(opts.connect_timeout)
            .tcp_nodelay(true)
            // The keepalive interval pymilvus uses (55 s), which Milvus's ping policy accepts.
            .http2_keep_alive_interval(Duration::from_secs(55))
            .keep_alive_timeout(Duration::from_secs(20))
            // No adaptive flow-control window: it starts at 64 KB, and a burst of answers not yet
            // read by hundreds of concurrent users then trips h2's small-frame limit, which
            // closes the whole connection (GOAWAY ENHANCE_YOUR_CALM). hyper's default windows
            // (5 MB connection, 2 MB stream) have no such cliff.
            .keep_alive_while_idle(true);
        if target.tls {
            let mut tls = ClientTlsConfig::new();
            // A given CA replaces the system roots, so a container without CA certificates works.
            tls = match &opts.tls.ca_pem {
                Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                None => tls.with_native_roots(),
            };
            if let Some(name) = &opts.tls.server_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| MilvusError::Connect {
                address: address.clone(),
                reason: format!("invalid TLS settings: {}", error_chain(&e)),
            })?;
        }
        let channel = match tokio::time::timeout(opts.connect_timeout, endpoint.connect()).await {
            Err(_) => {
                return Err(MilvusError::Connect {
                    address,
                    reason: format!(
                        "no connection within {:?} (is the address right and the port reachable?)",
                        opts.connect_timeout
                    ),
                });
            }
            Ok(Err(e)) => {
                return Err(MilvusError::Connect {
                    address,
                    reason: describe_connect_failure(&e, target.tls),
                });
            }
            Ok(Ok(channel)) => channel,
        };

        let interceptor = MetadataInterceptor::new(opts.credentials.as_ref(), &database, None)?;
        let mut client = MilvusClient {
            grpc: make_grpc(channel.clone(), interceptor),
            fast: None,
            // The handshake calls belong to connecting, so the connect timeout bounds them.
            request_timeout: opts.connect_timeout,
            shared: Arc::new(Shared {
                address: address.clone(),
                database: database.clone(),
                retry: opts.retry,
                server_version: String::new(),
                identifier: 0,
                last_write: Mutex::new(HashMap::new()),
                vector_dims: Mutex::new(HashMap::new()),
            }),
        };
        // Before the first answer, a failing call means "this is not a reachable Milvus": say so
        // as a connect error. UNIMPLEMENTED for GetVersion (every Milvus has it) comes from
        // something else listening there, such as an HTTP server answering 404.
        let as_connect_error = |err: MilvusError| match err {
            MilvusError::Transport { status, .. }
                if matches!(
                    status.code(),
                    Code::Unavailable
                        | Code::Unknown
                        | Code::Internal
                        | Code::Cancelled
                        | Code::Unimplemented
                ) =>
            {
                MilvusError::Connect {
                    address: address.clone(),
                    reason: describe_connect_status(&status, target.tls),
                }
            }
            MilvusError::Timeout { after, .. } => MilvusError::Connect {
                address: address.clone(),
                reason: format!(
                    "connected, but Milvus did not answer within {after:?} (is it still starting?)"
                ),
            },
            other => other,
        };

        let request = pbm::ConnectRequest {
            base: None,
            client_info: Some(pbc::ClientInfo {
                sdk_type: "Rust".to_string(),
                sdk_version: concat!("stampede/", env!("CARGO_PKG_VERSION")).to_string(),
                local_time: String::new(),
                user: match &opts.credentials {
                    Some(Credentials::UserPassword { username, .. }) => username.clone(),
                    _ => String::new(),
                },
                host: local_host_name(),
            }),
        };
        let (identifier, build_tags) = match client
            .call("Connect", None, request, |mut c, r| async move {
                c.connect(r).await
            })
            .await
        {
            Ok(resp) => (
                resp.identifier,
                resp.server_info.map(|s| s.build_tags).unwrap_or_default(),
            ),
            // Servers that predate the Connect call.
            Err(MilvusError::Transport { status, .. }) if status.code() == Code::Unimplemented => {
                (0, String::new())
            }
            Err(err) => return Err(as_connect_error(err)),
        };
        let version = match client
            .call(
                "GetVersion",
                None,
                pbm::GetVersionRequest {},
                |mut c, r| async move { c.get_version(r).await },
            )
            .await
        {
            Ok(resp) if !resp.version.is_empty() => resp.version,
            Ok(_) => build_tags,
            Err(_) if !build_tags.is_empty() => build_tags,
            Err(err) => return Err(as_connect_error(err)),
        };

        let interceptor =
            MetadataInterceptor::new(opts.credentials.as_ref(), &database, Some(identifier))?;
        client.fast = lean_channel(&target, &interceptor, opts.connect_timeout);
        client.grpc = make_grpc(channel, interceptor);
        client.request_timeout = opts.request_timeout;
        client.shared = Arc::new(Shared {
            address,
            database,
            retry: opts.retry,
            server_version: version,
            identifier,
            last_write: Mutex::new(HashMap::new()),
            vector_dims: Mutex::new(HashMap::new()),
        });
        tracing::debug!(
            address = %client.shared.address,
            version = %client.shared.server_version,
            identifier,
            "connected to Milvus"
        );
        Ok(client)
    }

    /// The server version, e.g. `v2.3.5-lite`.
    pub fn server_version(&self) -> &str {
        &self.shared.server_version
    }

    /// The identifier the server gave this connection (0 if the server has no Connect call).
    pub fn identifier(&self) -> i64 {
        self.shared.identifier
    }

    /// Opens the connection of the load's calls now, so the first measured request does not
    /// pay for it. A failure is only logged: the first call tries again and reports it.
    pub async fn warm_up(&self) {
        if let Some(fast) = &self.fast
            && let Err(status) = fast.ready().await
        {
            tracing::warn!(address = %self.shared.address, error = %status.message(), "cannot open the connection for the load's requests yet");
        }
    }

    /// This client with another limit on the time one call may take (the same connection).
    pub fn with_request_timeout(&self, timeout: Duration) -> MilvusClient {
        MilvusClient {
            request_timeout: timeout,
            ..self.clone()
        }
    }

    /// The address connected to.
    pub fn address(&self) -> &str {
        &self.shared.address
    }

    /// One unary call: per-call deadline, gRPC errors converted, the Milvus status checked.
    async fn call<Req, Resp, F, Fut>(
        &self,
        method: &'static str,
        collection: Option<&str>,
        request: Req,
        rpc: F,
    ) -> Result<Resp, MilvusError>
    where
        F: FnOnce(Grpc, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
        Resp: WithStatus,
    {
        let timeout = self.request_timeout;
        let mut request = tonic::Request::new(request);
        // Tells the server to give up too, so an abandoned call does not keep working there.
        request.set_timeout(timeout);
        let grpc = self.grpc.clone();
        self.finish(method, collection, async move {
            rpc(grpc, request).await.map(tonic::Response::into_inner)
        })
        .await
    }

    /// A call of the load's hot path: over the lean transport when there is one, else tonic.
    async fn call_hot<Req, Resp, F, Fut>(
        &self,
        method: &'static str,
        path: &'static str,
        collection: &str,
        request: Req,
        rpc: F,
    ) -> Result<Resp, MilvusError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default + WithStatus,
        F: FnOnce(Grpc, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        match &self.fast {
            Some(fast) => {
                let timeout = self.request_timeout;
                self.finish(
                    method,
                    Some(collection),
                    fast.unary(path, &request, timeout),
                )
                .await
            }
            None => self.call(method, Some(collection), request, rpc).await,
        }
    }

    /// Bounds a call by the request timeout, converts its gRPC error and checks its status.
    async fn finish<Resp, Fut>(
        &self,
        method: &'static str,
        collection: Option<&str>,
        call: Fut,
    ) -> Result<Resp, MilvusError>
    where
        Fut: Future<Output = Result<Resp, tonic::Status>>,
        Resp: WithStatus,
    {
        let timeout = self.request_timeout;
        let response = match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                return Err(MilvusError::Timeout {
                    method,
                    after: timeout,
                });
            }
            Ok(Err(status)) => return Err(MilvusError::from_grpc(method, status, timeout)),
            Ok(Ok(response)) => response,
        };
        check_status(method, collection, response.status())?;
        Ok(response)
    }

    /// [`Self::call`] with retries of transient errors.
    async fn call_retrying<Req, Resp, B, F, Fut>(
        &self,
        method: &'static str,
        collection: Option<&str>,
        build: B,
        rpc: F,
    ) -> Result<Resp, MilvusError>
    where
        B: Fn() -> Req,
        F: Fn(Grpc, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
        Resp: WithStatus,
    {
        with_retry(&self.shared.retry, method, Idempotency::Safe, || {
            self.call(method, collection, build(), &rpc)
        })
        .await
    }

    fn db(&self) -> String {
        self.shared.database.clone()
    }

    /// Whether every Milvus component reports healthy.
    pub async fn check_health(&self) -> Result<bool, MilvusError> {
        let resp = self
            .call_retrying(
                "CheckHealth",
                None,
                || pbm::CheckHealthRequest {},
                |mut c, r| async move { c.check_health(r).await },
            )
            .await?;
        if !resp.is_healthy {
            tracing::warn!(reasons = ?resp.reasons, "Milvus reports itself unhealthy");
        }
        Ok(resp.is_healthy)
    }

    /// Whether the collection exists.
    pub async fn has_collection(&self, name: &str) -> Result<bool, MilvusError> {
        let result = self
            .call_retrying(
                "HasCollection",
                Some(name),
                || pbm::HasCollectionRequest {
                    base: None,
                    db_name: self.db(),
                    collection_name: name.to_string(),
                    time_stamp: 0,
                },
                |mut c, r| async move { c.has_collection(r).await },
            )
            .await;
        match result {
            Ok(resp) => Ok(resp.value),
            // Some versions answer "not found" instead of false.
            Err(MilvusError::CollectionNotFound { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The collection's schema and settings; [`MilvusError::CollectionNotFound`] if it is missing.
    pub async fn describe_collection(&self, name: &str) -> Result<CollectionInfo, MilvusError> {
        let resp = self
            .call_retrying(
                "DescribeCollection",
                Some(name),
                || pbm::DescribeCollectionRequest {
                    base: None,
                    db_name: self.db(),
                    collection_name: name.to_string(),
                    collection_id: 0,
                    time_stamp: 0,
                },
                |mut c, r| async move { c.describe_collection(r).await },
            )
            .await?;
        let schema = resp.schema.unwrap_or_default();
        let fields: Vec<FieldDef> = schema
            .fields
            .iter()
            .map(|f| FieldDef {
                name: f.name.clone(),
                field_type: FieldType::from_schema(f),
                primary_key: f.is_primary_key,
                auto_id: f.auto_id,
            })
            .collect();
        let auto_id = schema.auto_id || fields.iter().any(|f| f.primary_key && f.auto_id);
        Ok(CollectionInfo {
            name: if resp.collection_name.is_empty() {
                name.to_string()
            } else {
                resp.collection_name
            },
            collection_id: resp.collection_id,
            description: schema.description,
            fields,
            shards: resp.shards_num,
            consistency: ConsistencyLevel::from_proto(resp.consistency_level),
            auto_id,
        })
    }

    /// Creates a collection with `shards` shards and default consistency level `consistency`.
    pub async fn create_collection(
        &self,
        schema: &CollectionSchemaDef,
        shards: i32,
        consistency: ConsistencyLevel,
    ) -> Result<(), MilvusError> {
        if schema.fields.is_empty() {
            return Err(MilvusError::InvalidArgument(format!(
                "collection `{}` needs at least a primary key and a vector field",
                schema.name
            )));
        }
        let mut fields = Vec::with_capacity(schema.fields.len());
        for f in &schema.fields {
            let (data_type, type_params) = f.field_type.to_schema(&f.name)?;
            fields.push(pbs::FieldSchema {
                field_id: 0,
                name: f.name.clone(),
                is_primary_key: f.primary_key,
                description: String::new(),
                data_type: data_type as i32,
                type_params,
                index_params: Vec::new(),
                auto_id: f.primary_key && f.auto_id,
            });
        }
        let encoded = pbs::CollectionSchema {
            name: schema.name.clone(),
            description: schema.description.clone(),
            auto_id: schema.fields.iter().any(|f| f.primary_key && f.auto_id),
            fields,
            enable_dynamic_field: false,
        }
        .encode_to_vec();
        self.call_retrying(
            "CreateCollection",
            None,
            || pbm::CreateCollectionRequest {
                base: None,
                db_name: self.db(),
                collection_name: schema.name.clone(),
                schema: encoded.clone(),
                shards_num: shards,
                consistency_level: consistency.to_proto() as i32,
                properties: Vec::new(),
            },
            |mut c, r| async move { c.create_collection(r).await },
        )
        .await?;
        self.forget_vector_dims(&schema.name);
        Ok(())
    }

    fn forget_vector_dims(&self, name: &str) {
        if let Ok(mut dims) = self.shared.vector_dims.lock() {
            dims.remove(name);
        }
    }

    /// The collection's vector fields and their dimensions, from the cache unless `refresh`.
    async fn vector_dims(
        &self,
        name: &str,
        refresh: bool,
    ) -> Result<HashMap<String, u32>, MilvusError> {
        if !refresh {
            let cached = self
                .shared
                .vector_dims
                .lock()
                .ok()
                .and_then(|dims| dims.get(name).cloned());
            if let Some(dims) = cached {
                return Ok(dims);
            }
        }
        let info = self.describe_collection(name).await?;
        let dims: HashMap<String, u32> = info
            .fields
            .iter()
            .filter_map(|f| match f.field_type {
                FieldType::FloatVector { dim } => Some((f.name.clone(), dim)),
                _ => None,
            })
            .collect();
        if let Ok(mut cache) = self.shared.vector_dims.lock() {
            cache.insert(name.to_string(), dims.clone());
        }
        Ok(dims)
    }

    /// Fails with [`MilvusError::SchemaMismatch`] if a vector column's dimension differs from
    /// the collection's. A mismatch against the cache is confirmed with a fresh DescribeCollection,
    /// in case the collection was recreated by someone else.
    async fn check_vector_dims(&self, name: &str, columns: &[Column]) -> Result<(), MilvusError> {
        let mismatch = |dims: &HashMap<String, u32>| {
            columns.iter().find_map(|c| match c {
                Column::FloatVector { name: field, dim, .. } => dims
                    .get(field)
                    .filter(|&&want| want != *dim)
                    .map(|want| {
                        format!(
                            "collection `{name}` stores `{field}` vectors of dimension {want}, but the inserted vectors have dimension {dim}"
                        )
                    }),
                _ => None,
            })
        };
        if !columns
            .iter()
            .any(|c| matches!(c, Column::FloatVector { .. }))
        {
            return Ok(());
        }
        if mismatch(&self.vector_dims(name, false).await?).is_none() {
            return Ok(());
        }
        match mismatch(&self.vector_dims(name, true).await?) {
            None => Ok(()),
            Some(reason) => Err(MilvusError::SchemaMismatch { reason }),
        }
    }

    /// Drops the collection and its data.
    pub async fn drop_collection(&self, name: &str) -> Result<(), MilvusError> {
        self.call_retrying(
            "DropCollection",
            Some(name),
            || pbm::DropCollectionRequest {
                base: None,
                db_name: self.db(),
                collection_name: name.to_string(),
            },
            |mut c, r| async move { c.drop_collection(r).await },
        )
        .await?;
        if let Ok(mut last_write) = self.shared.last_write.lock() {
            last_write.remove(name);
        }
        self.forget_vector_dims(name);
        Ok(())
    }

    /// The number of rows.
    ///
    /// - Loaded collection: an exact `count(*)` query at Strong consistency, which sees every
    ///   acknowledged insert and delete, flushed or not.
    /// - Otherwise (a query would fail with "collection not loaded", code 101): the `row_count`
    ///   of GetCollectionStatistics. It does not subtract deletes, and on 2.3.5 it counts flushed
    ///   rows only: measured, 100 rows inserted but not flushed read as 0, still 0 two seconds
    ///   later. Call [`Self::flush`] first when the collection is not loaded.
    pub async fn row_count(&self, name: &str) -> Result<u64, MilvusError> {
        if self.load_state(name).await? == LoadState::Loaded {
            let rows = self
                .query(
                    name,
                    "",
                    &["count(*)".to_string()],
                    None,
                    ConsistencyLevel::Strong,
                )
                .await?;
            return match rows.columns.first() {
                Some(Column::Int64 { data, .. }) => {
                    Ok(data.first().copied().unwrap_or(0).max(0) as u64)
                }
                _ => Err(MilvusError::Server {
                    method: "Query",
                    code: 0,
                    error_code: 0,
                    reason: "count(*) returned no INT64 column".to_string(),
                    retriable: false,
                }),
            };
        }
        let resp = self
            .call_retrying(
                "GetCollectionStatistics",
                Some(name),
                || pbm::GetCollectionStatisticsRequest {
                    base: None,
                    db_name: self.db(),
                    collection_name: name.to_string(),
                },
                |mut c, r| async move { c.get_collection_statistics(r).await },
            )
            .await?;
        Ok(resp
            .stats
            .iter()
            .find(|kv| kv.key == "row_count")
            .and_then(|kv| kv.value.trim().parse().ok())
            .unwrap_or(0))
    }

    /// Inserts `num_rows` rows given column by column; returns how many rows Milvus accepted.
    /// Retried only when the failure proves nothing was written (rate limit, no connection).
    pub async fn insert(
        &self,
        name: &str,
        columns: &[Column],
        num_rows: usize,
    ) -> Result<u64, MilvusError> {
        if num_rows == 0 {
            return Ok(0);
        }
        if columns.is_empty() {
            return Err(MilvusError::InvalidArgument(format!(
                "insert into `{name}` has {num_rows} rows but no columns"
            )));
        }
        let rows = u32::try_from(num_rows).map_err(|_| {
            MilvusError::InvalidArgument(format!(
                "insert of {num_rows} rows is too large for one request; send smaller batches"
            ))
        })?;
        for column in columns {
            if let Column::FloatVector {
                name: field,
                dim,
                data,
            } = column
            {
                if *dim == 0 || data.len() != num_rows * *dim as usize {
                    return Err(MilvusError::SchemaMismatch {
                        reason: format!(
                            "vector column `{field}` holds {} floats, which is not {num_rows} rows of dimension {dim}",
                            data.len()
                        ),
                    });
                }
            } else if column.len() != num_rows {
                return Err(MilvusError::SchemaMismatch {
                    reason: format!(
                        "column `{}` holds {} values but the batch has {num_rows} rows",
                        column.name(),
                        column.len()
                    ),
                });
            }
        }
        self.check_vector_dims(name, columns).await?;
        let resp = with_retry(&self.shared.retry, "Insert", Idempotency::Unsafe, || {
            // Built per attempt from the borrowed columns, so the first attempt copies once.
            let request = pbm::InsertRequest {
                base: None,
                db_name: self.db(),
                collection_name: name.to_string(),
                partition_name: String::new(),
                fields_data: columns.iter().map(Column::to_field_data).collect(),
                hash_keys: Vec::new(),
                num_rows: rows,
            };
            self.call("Insert", Some(name), request, |mut c, r| async move {
                c.insert(r).await
            })
        })
        .await?;
        if resp.timestamp != 0 {
            let mut last_write = self
                .shared
                .last_write
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let entry = last_write.entry(name.to_string()).or_insert(0);
            *entry = (*entry).max(resp.timestamp);
        }
        // Servers before 2.2 did not fill insert_cnt.
        let inserted = if resp.insert_cnt > 0 {
            resp.insert_cnt as u64
        } else {
            resp.succ_index.len() as u64
        };
        Ok(inserted)
    }

    /// Seals the collection's growing segments and waits (up to [`DEFAULT_FLUSH_DEADLINE`]) until
    /// they are persisted.
    pub async fn flush(&self, name: &str) -> Result<(), MilvusError> {
        self.flush_within(name, DEFAULT_FLUSH_DEADLINE).await
    }

    /// [`Self::flush`] with an explicit deadline.
    pub async fn flush_within(&self, name: &str, deadline: Duration) -> Result<(), MilvusError> {
        let resp = self
            .call_retrying(
                "Flush",
                Some(name),
                || pbm::FlushRequest {
                    base: None,
                    db_name: self.db(),
                    collection_names: vec![name.to_string()],
                },
                |mut c, r| async move { c.flush(r).await },
            )
            .await?;
        let segments = resp
            .coll_seg_i_ds
            .get(name)
            .map(|ids| ids.data.clone())
            .unwrap_or_default();
        let flush_ts = resp.coll_flush_ts.get(name).copied().unwrap_or(0);
        let started = Instant::now();
        loop {
            let state = self
                .call_retrying(
                    "GetFlushState",
                    Some(name),
                    || pbm::GetFlushStateRequest {
                        segment_i_ds: segments.clone(),
                        flush_ts,
                        db_name: self.db(),
                        collection_name: name.to_string(),
                    },
                    |mut c, r| async move { c.get_flush_state(r).await },
                )
                .await?;
            if state.flushed {
                return Ok(());
            }
            if started.elapsed() >= deadline {
                return Err(MilvusError::Timeout {
                    method: "Flush",
                    after: deadline,
                });
            }
            tokio::time::sleep(FLUSH_POLL_INTERVAL).await;
        }
    }

    /// Starts building an index on `field` (poll [`Self::index_progress`] to wait for it).
    pub async fn create_index(
        &self,
        name: &str,
        field: &str,
        index: &IndexDef,
    ) -> Result<(), MilvusError> {
        // The flat form pymilvus sends; 2.3+ read each pair as a build parameter.
        let mut extra_params = Vec::with_capacity(index.params.len() + 2);
        for (key, value) in &index.params {
            extra_params.push(kv(key, value.clone()));
        }
        extra_params.push(kv("metric_type", index.metric_type.clone()));
        extra_params.push(kv("index_type", index.index_type.clone()));
        self.call_retrying(
            "CreateIndex",
            Some(name),
            || pbm::CreateIndexRequest {
                base: None,
                db_name: self.db(),
                collection_name: name.to_string(),
                field_name: field.to_string(),
                extra_params: extra_params.clone(),
                index_name: index.index_name.clone(),
            },
            |mut c, r| async move { c.create_index(r).await },
        )
        .await?;
        Ok(())
    }

    async fn describe_index_raw(
        &self,
        name: &str,
        field: &str,
    ) -> Result<Option<pbm::IndexDescription>, MilvusError> {
        let result = with_retry(
            &self.shared.retry,
            "DescribeIndex",
            Idempotency::Safe,
            || async {
                let request = tonic::Request::new(pbm::DescribeIndexRequest {
                    base: None,
                    db_name: self.db(),
                    collection_name: name.to_string(),
                    field_name: field.to_string(),
                    index_name: String::new(),
                    timestamp: 0,
                });
                let response = self.raw_describe_index(request).await?;
                // "Index not found" is an answer here, not an error; other statuses are
                // checked inside the retry so that transient ones are retried.
                if is_index_not_found(response.status.as_ref()) {
                    return Ok(None);
                }
                check_status("DescribeIndex", Some(name), response.status.as_ref())?;
                Ok(Some(response))
            },
        )
        .await?;
        let Some(result) = result else {
            return Ok(None);
        };
        // The server filters by field; an answer about another field is not this field's index.
        Ok(result
            .index_descriptions
            .into_iter()
            .find(|d| d.field_name == field || d.field_name.is_empty()))
    }

    /// DescribeIndex without the status check, because "index not found" is an answer here.
    async fn raw_describe_index(
        &self,
        mut request: tonic::Request<pbm::DescribeIndexRequest>,
    ) -> Result<pbm::DescribeIndexResponse, MilvusError> {
        let timeout = self.request_timeout;
        request.set_timeout(timeout);
        let mut grpc = self.grpc.clone();
        match tokio::time::timeout(timeout, grpc.describe_index(request)).await {
            Err(_) => Err(MilvusError::Timeout {
                method: "DescribeIndex",
                after: timeout,
            }),
            Ok(Err(status)) => Err(MilvusError::from_grpc("DescribeIndex", status, timeout)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    /// The build progress of the index on `field`, or None if the field has no index.
    pub async fn index_progress(
        &self,
        name: &str,
        field: &str,
    ) -> Result<Option<IndexProgress>, MilvusError> {
        Ok(self
            .describe_index_raw(name, field)
            .await?
            .map(|d| IndexProgress {
                index_name: d.index_name,
                state: IndexState::from_proto(d.state),
                indexed_rows: d.indexed_rows.max(0) as u64,
                total_rows: d.total_rows.max(0) as u64,
                pending_index_rows: d.pending_index_rows.max(0) as u64,
                fail_reason: d.index_state_fail_reason,
            }))
    }

    /// The index on `field` (type, metric, parameters), or None if there is none.
    pub async fn describe_index(
        &self,
        name: &str,
        field: &str,
    ) -> Result<Option<IndexInfo>, MilvusError> {
        Ok(self
            .describe_index_raw(name, field)
            .await?
            .map(|d| index_info_from_params(d.index_name, d.field_name, &d.params)))
    }

    /// Drops the index on `field`.
    pub async fn drop_index(&self, name: &str, field: &str) -> Result<(), MilvusError> {
        self.call_retrying(
            "DropIndex",
            Some(name),
            || pbm::DropIndexRequest {
                base: None,
                db_name: self.db(),
                collection_name: name.to_string(),
                field_name: field.to_string(),
                index_name: String::new(),
            },
            |mut c, r| async move { c.drop_index(r).await },
        )
        .await?;
        Ok(())
    }

    /// Starts loading the collection with `replicas` in-memory replicas (poll
    /// [`Self::loading_progress`] / [`Self::load_state`] to wait).
    pub async fn load_collection(&self, name: &str, replicas: i32) -> Result<(), MilvusError> {
        self.call_retrying(
            "LoadCollection",
            Some(name),
            || pbm::LoadCollectionRequest {
                base: None,
                db_name: self.db(),
                collection_name: name.to_string(),
                replica_number: replicas.max(1),
            },
            |mut c, r| async move { c.load_collection(r).await },
        )
        .await?;
        Ok(())
    }

    /// Loading progress in percent (0–100).
    pub async fn loading_progress(&self, name: &str) -> Result<u8, MilvusError> {
        let resp = self
            .call_retrying(
                "GetLoadingProgress",
                Some(name),
                || pbm::GetLoadingProgressRequest {
                    base: None,
                    collection_name: name.to_string(),
                    partition_names: Vec::new(),
                    db_name: self.db(),
                },
                |mut c, r| async move { c.get_loading_progress(r).await },
            )
            .await?;
        Ok(resp.progress.clamp(0, 100) as u8)
    }

    /// Whether the collection is loaded.
    pub async fn load_state(&self, name: &str) -> Result<LoadState, MilvusError> {
        let resp = self
            .call_retrying(
                "GetLoadState",
                Some(name),
                || pbm::GetLoadStateRequest {
                    base: None,
                    collection_name: name.to_string(),
                    partition_names: Vec::new(),
                    db_name: self.db(),
                },
                |mut c, r| async move { c.get_load_state(r).await },
            )
            .await?;
        Ok(match pbc::LoadState::try_from(resp.state) {
            Ok(pbc::LoadState::NotExist) => LoadState::NotExist,
            Ok(pbc::LoadState::Loading) => LoadState::Loading,
            Ok(pbc::LoadState::Loaded) => LoadState::Loaded,
            // An unknown future state is treated as "not searchable".
            Ok(pbc::LoadState::NotLoad) | Err(_) => LoadState::NotLoad,
        })
    }

    /// Releases the collection from memory.
    pub async fn release_collection(&self, name: &str) -> Result<(), MilvusError> {
        self.call_retrying(
            "ReleaseCollection",
            Some(name),
            || pbm::ReleaseCollectionRequest {
                base: None,
                db_name: self.db(),
                collection_name: name.to_string(),
            },
            |mut c, r| async move { c.release_collection(r).await },
        )
        .await?;
        Ok(())
    }

    /// The guarantee timestamp to send for `level` on `collection` (see the module docs).
    fn guarantee_timestamp(&self, collection: &str, level: ConsistencyLevel) -> u64 {
        match level {
            ConsistencyLevel::Strong => 0,
            ConsistencyLevel::Session => self
                .shared
                .last_write
                .lock()
                .map(|m| m.get(collection).copied())
                .unwrap_or_else(|poisoned| poisoned.into_inner().get(collection).copied())
                .unwrap_or(EVENTUALLY_TS),
            ConsistencyLevel::Bounded => BOUNDED_TS,
            ConsistencyLevel::Eventually => EVENTUALLY_TS,
        }
    }

    /// Searches `vectors` (`nq × dim` floats, row-major) with the template, optionally filtered
    /// by a boolean expression. Not retried: the caller counts failures.
    pub async fn search(
        &self,
        t: &SearchTemplate,
        vectors: &[f32],
        dim: usize,
        filter: Option<&str>,
    ) -> Result<SearchHits, MilvusError> {
        if dim == 0 || vectors.is_empty() || !vectors.len().is_multiple_of(dim) {
            return Err(MilvusError::InvalidArgument(format!(
                "search vectors hold {} floats, which is not a positive multiple of dimension {dim}",
                vectors.len()
            )));
        }
        let nq = vectors.len() / dim;
        let guarantee = self.guarantee_timestamp(&t.collection, t.consistency);
        let resp: pbm::SearchResults = match &self.fast {
            Some(fast) => {
                let body = encode_search(&self.shared.database, t, vectors, dim, filter, guarantee);
                let timeout = self.request_timeout;
                self.finish(
                    "Search",
                    Some(&t.collection),
                    fast.unary_framed(SEARCH_PATH, body, timeout),
                )
                .await?
            }
            None => {
                let request =
                    search_request(&self.shared.database, t, vectors, dim, filter, guarantee);
                self.call(
                    "Search",
                    Some(&t.collection),
                    request,
                    |mut c, r| async move { c.search(r).await },
                )
                .await?
            }
        };
        split_search_results(nq, resp.results)
    }

    /// Rows matching `expr` (may be empty together with a limit, or with `count(*)`), with the
    /// given output fields. Retried on transient errors.
    pub async fn query(
        &self,
        name: &str,
        expr: &str,
        output_fields: &[String],
        limit: Option<u64>,
        consistency: ConsistencyLevel,
    ) -> Result<QueryRows, MilvusError> {
        let resp = self
            .call_retrying(
                "Query",
                Some(name),
                || self.query_request(name, expr, output_fields, limit, consistency),
                |mut c, r| async move { c.query(r).await },
            )
            .await?;
        Ok(query_rows(resp))
    }

    /// [`Self::query`] once, without retries, as the load issues it: the caller counts failures.
    pub async fn query_once(
        &self,
        name: &str,
        expr: &str,
        output_fields: &[String],
        limit: Option<u64>,
        consistency: ConsistencyLevel,
    ) -> Result<QueryRows, MilvusError> {
        let request = self.query_request(name, expr, output_fields, limit, consistency);
        let resp: pbm::QueryResults = self
            .call_hot("Query", QUERY_PATH, name, request, |mut c, r| async move {
                c.query(r).await
            })
            .await?;
        Ok(query_rows(resp))
    }

    fn query_request(
        &self,
        name: &str,
        expr: &str,
        output_fields: &[String],
        limit: Option<u64>,
        consistency: ConsistencyLevel,
    ) -> pbm::QueryRequest {
        pbm::QueryRequest {
            base: None,
            db_name: self.db(),
            collection_name: name.to_string(),
            expr: expr.to_string(),
            output_fields: output_fields.to_vec(),
            partition_names: Vec::new(),
            travel_timestamp: 0,
            guarantee_timestamp: self.guarantee_timestamp(name, consistency),
            query_params: limit
                .map(|limit| kv("limit", limit.to_string()))
                .into_iter()
                .collect(),
            not_return_all_meta: false,
            consistency_level: consistency.to_proto() as i32,
            use_default_consistency: false,
        }
    }
}

fn query_rows(resp: pbm::QueryResults) -> QueryRows {
    let columns: Vec<Column> = resp
        .fields_data
        .into_iter()
        .filter_map(Column::from_field_data)
        .collect();
    let rows = columns.iter().map(Column::len).max().unwrap_or(0);
    QueryRows { columns, rows }
}

/// The host name sent in ClientInfo (Milvus only displays it).
fn local_host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default()
}

/// Reads DescribeIndex parameters in either form: flat pairs, or one `params` JSON pair.
fn index_info_from_params(
    index_name: String,
    field_name: String,
    params: &[pbc::KeyValuePair],
) -> IndexInfo {
    let mut info = IndexInfo {
        index_name,
        field_name,
        index_type: String::new(),
        metric_type: String::new(),
        params: BTreeMap::new(),
    };
    let put = |key: &str, value: String, info: &mut IndexInfo| match key {
        "index_type" => info.index_type = value,
        "metric_type" => info.metric_type = value,
        _ => {
            info.params.insert(key.to_string(), value);
        }
    };
    for pair in params {
        if pair.key == "params" {
            if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&pair.value) {
                for (key, value) in map {
                    let value = match value {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    put(&key, value, &mut info);
                }
            }
        } else {
            put(&pair.key, pair.value.clone(), &mut info);
        }
    }
    info
}

/// Encodes `common.PlaceholderGroup{placeholders: [{tag: "$0", type: FloatVector, values: one
/// little-endian f32 blob per query}]}` straight into one buffer.
/// The SearchRequest of a search (for tonic).
fn search_request(
    database: &str,
    t: &SearchTemplate,
    vectors: &[f32],
    dim: usize,
    filter: Option<&str>,
    guarantee_timestamp: u64,
) -> pbm::SearchRequest {
    let mut placeholder_group = Vec::new();
    write_placeholder_group(vectors, dim, &mut placeholder_group);
    pbm::SearchRequest {
        base: None,
        db_name: database.to_string(),
        collection_name: t.collection.clone(),
        partition_names: Vec::new(),
        dsl: filter.unwrap_or_default().to_string(),
        placeholder_group,
        dsl_type: pbc::DslType::BoolExprV1 as i32,
        output_fields: t.output_fields.clone(),
        search_params: t.search_params.clone(),
        travel_timestamp: 0,
        guarantee_timestamp,
        nq: (vectors.len() / dim.max(1)) as i64,
        not_return_all_meta: false,
        consistency_level: t.consistency.to_proto() as i32,
        use_default_consistency: false,
    }
}

/// The same request as [`search_request`], framed for gRPC (5-byte prefix) in one buffer: the
/// template's pre-encoded constant fields, then this request's own. Protobuf readers accept
/// fields in any order, so nothing but the vectors and the filter is encoded per request.
fn encode_search(
    database: &str,
    t: &SearchTemplate,
    vectors: &[f32],
    dim: usize,
    filter: Option<&str>,
    guarantee_timestamp: u64,
) -> bytes::Bytes {
    use bytes::BufMut;
    use prost::encoding::{WireType, encode_key, encode_varint};
    let group_len = placeholder_group_len(vectors, dim);
    let filter = filter.filter(|f| !f.is_empty());
    let mut buf = bytes::BytesMut::with_capacity(
        5 + 32 + database.len() + t.encoded.len() + filter.map_or(0, str::len) + group_len,
    );
    buf.put_bytes(0, 5);
    let string = |tag: u32, value: &str, buf: &mut bytes::BytesMut| {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.put_slice(value.as_bytes());
    };
    if !database.is_empty() {
        string(2, database, &mut buf);
    }
    buf.put_slice(&t.encoded);
    if let Some(filter) = filter {
        string(5, filter, &mut buf);
    }
    encode_key(6, WireType::LengthDelimited, &mut buf);
    encode_varint(group_len as u64, &mut buf);
    write_placeholder_group(vectors, dim, &mut buf);
    if guarantee_timestamp != 0 {
        encode_key(11, WireType::Varint, &mut buf);
        encode_varint(guarantee_timestamp, &mut buf);
    }
    let nq = (vectors.len() / dim.max(1)) as u64;
    if nq != 0 {
        encode_key(12, WireType::Varint, &mut buf);
        encode_varint(nq, &mut buf);
    }
    let len = (buf.len() - 5) as u32;
    buf[1..5].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

/// The encoded length of [`write_placeholder_group`]'s output.
fn placeholder_group_len(vectors: &[f32], dim: usize) -> usize {
    let value_len = placeholder_value_len(vectors, dim);
    1 + prost::encoding::encoded_len_varint(value_len as u64) + value_len
}

/// The length of the one PlaceholderValue: tag (field 1) "$0", type (field 2) = 101, values
/// (field 3) × nq.
fn placeholder_value_len(vectors: &[f32], dim: usize) -> usize {
    let vector_bytes = dim * 4;
    let nq = vectors.len() / dim.max(1);
    4 + 2 + nq * (1 + prost::encoding::encoded_len_varint(vector_bytes as u64) + vector_bytes)
}

/// Writes the PlaceholderGroup of float vectors (`nq × dim`, row-major) Milvus expects.
fn write_placeholder_group(vectors: &[f32], dim: usize, buf: &mut impl bytes::BufMut) {
    use prost::encoding::encode_varint;
    let vector_bytes = dim * 4;
    let value_len = placeholder_value_len(vectors, dim);
    buf.put_u8(0x0a); // PlaceholderGroup.placeholders, length-delimited
    encode_varint(value_len as u64, buf);
    buf.put_slice(&[0x0a, 0x02, b'$', b'0']); // tag = "$0"
    buf.put_u8(0x10); // type, varint
    buf.put_u8(pbc::PlaceholderType::FloatVector as u8); // 101 fits one varint byte
    for vector in vectors.chunks_exact(dim.max(1)) {
        buf.put_u8(0x1a); // values, length-delimited
        encode_varint(vector_bytes as u64, buf);
        for x in vector {
            buf.put_f32_le(*x);
        }
    }
}

#[cfg(test)]
fn encode_placeholder_group(vectors: &[f32], dim: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(placeholder_group_len(vectors, dim));
    write_placeholder_group(vectors, dim, &mut buf);
    buf
}

/// Splits the flattened ids and scores of a search answer per query (using `topks`), without
/// trusting the answer to be well formed.
fn split_search_results(
    nq: usize,
    results: Option<pbs::SearchResultData>,
) -> Result<SearchHits, MilvusError> {
    let mut hits = SearchHits {
        nq,
        ids: Vec::with_capacity(nq),
        scores: Vec::with_capacity(nq),
    };
    let Some(results) = results else {
        hits.ids.resize(nq, Vec::new());
        hits.scores.resize(nq, Vec::new());
        return Ok(hits);
    };
    let ids = match results.ids.and_then(|ids| ids.id_field) {
        Some(pbs::i_ds::IdField::IntId(ids)) => ids.data,
        Some(pbs::i_ds::IdField::StrId(ids)) if ids.data.is_empty() => Vec::new(),
        Some(pbs::i_ds::IdField::StrId(_)) => {
            return Err(MilvusError::InvalidArgument(
                "the collection has a VARCHAR primary key; this client reads INT64 keys only"
                    .to_string(),
            ));
        }
        None => Vec::new(),
    };
    let scores = results.scores;
    let counts: Vec<usize> = if results.topks.is_empty() {
        // Old servers: every query got the same number of hits.
        let per_query = ids.len() / nq.max(1);
        vec![per_query; nq]
    } else {
        results
            .topks
            .iter()
            .map(|&k| usize::try_from(k).unwrap_or(0))
            .collect()
    };
    let mut offset = 0usize;
    for q in 0..nq {
        let count = counts.get(q).copied().unwrap_or(0);
        let end = offset.saturating_add(count);
        hits.ids.push(
            ids.get(offset..end.min(ids.len()))
                .unwrap_or_default()
                .to_vec(),
        );
        hits.scores.push(
            scores
                .get(offset..end.min(scores.len()))
                .unwrap_or_default()
                .to_vec(),
        );
        offset = end;
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn base64_matches_the_rfc_4648_examples_and_the_milvus_root_header() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
        assert_eq!(base64_encode(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(&[0xff, 0xfe, 0xfd]), "//79");
        let root = Credentials::UserPassword {
            username: "root".into(),
            password: "Milvus".into(),
        };
        assert_eq!(root.authorization_header(), "cm9vdDpNaWx2dXM=");
        assert_eq!(
            Credentials::Token("root:Milvus".into()).authorization_header(),
            "cm9vdDpNaWx2dXM="
        );
        assert_eq!(
            Credentials::UserPassword {
                username: "user".into(),
                password: "pässword".into()
            }
            .authorization_header(),
            "dXNlcjpww6Rzc3dvcmQ="
        );
    }

    #[test]
    fn credentials_are_redacted_in_debug_output() {
        let shown = format!(
            "{:?}",
            Credentials::UserPassword {
                username: "root".into(),
                password: "Milvus".into()
            }
        );
        assert_eq!(
            shown,
            "UserPassword { username: \"root\", password: \"<redacted>\" }"
        );
        assert_eq!(
            format!("{:?}", Credentials::Token("secret".into())),
            "Token(\"<redacted>\")"
        );
    }

    #[test]
    fn the_interceptor_adds_authorization_database_and_identifier() {
        let credentials = Credentials::UserPassword {
            username: "root".into(),
            password: "Milvus".into(),
        };
        let mut interceptor =
            MetadataInterceptor::new(Some(&credentials), "analytics", Some(42)).unwrap();
        let request = interceptor.call(tonic::Request::new(())).unwrap();
        let md = request.metadata();
        assert_eq!(md.get("authorization").unwrap(), "cm9vdDpNaWx2dXM=");
        assert_eq!(md.get("dbname").unwrap(), "analytics");
        assert_eq!(md.get("identifier").unwrap(), "42");

        let mut bare = MetadataInterceptor::new(None, "", Some(0)).unwrap();
        let request = bare.call(tonic::Request::new(())).unwrap();
        assert!(request.metadata().is_empty());
    }

    #[test]
    fn default_database_names_are_not_sent() {
        assert_eq!(normalise_database(""), "");
        assert_eq!(normalise_database("default"), "");
        assert_eq!(normalise_database(" bench "), "bench");
    }

    #[test]
    fn addresses_become_uris_and_https_turns_tls_on() {
        let t = Target::parse("127.0.0.1:19530", false).unwrap();
        assert_eq!((t.uri.as_str(), t.tls), ("http://127.0.0.1:19530", false));
        let t = Target::parse("milvus:19530", true).unwrap();
        assert_eq!((t.uri.as_str(), t.tls), ("https://milvus:19530", true));
        let t = Target::parse("https://milvus.example.com:443/", false).unwrap();
        assert_eq!(
            (t.uri.as_str(), t.tls),
            ("https://milvus.example.com:443", true)
        );
        let t = Target::parse("http://milvus:19530", false).unwrap();
        assert_eq!((t.uri.as_str(), t.tls), ("http://milvus:19530", false));
        assert!(matches!(
            Target::parse("tcp://milvus:19530", false),
            Err(MilvusError::InvalidArgument(_))
        ));
        assert!(matches!(
            Target::parse("  ", false),
            Err(MilvusError::InvalidArgument(_))
        ));
    }

    #[test]
    fn the_placeholder_group_is_byte_identical_to_the_captured_pymilvus_request() {
        // From milvus-proto-facts.md, Appendix A: [0.1, 0.2, 0.3, 0.4] as pymilvus encodes it.
        let bytes = encode_placeholder_group(&[0.1, 0.2, 0.3, 0.4], 4);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "0a180a02243010651a10cdcccc3dcdcc4c3e9a99993ecdcccc3e");
    }

    #[test]
    fn the_placeholder_group_matches_prost_for_a_batch_of_large_vectors() {
        let dim = 768;
        let vectors: Vec<f32> = (0..5 * dim).map(|i| i as f32 * 0.25).collect();
        let expected = pbc::PlaceholderGroup {
            placeholders: vec![pbc::PlaceholderValue {
                tag: "$0".into(),
                r#type: pbc::PlaceholderType::FloatVector as i32,
                values: vectors
                    .chunks(dim)
                    .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
                    .collect(),
            }],
        }
        .encode_to_vec();
        assert_eq!(encode_placeholder_group(&vectors, dim), expected);
    }

    #[test]
    fn the_pre_encoded_search_decodes_to_the_request_tonic_sends() {
        let params = serde_json::json!({"ef": 64}).as_object().cloned().unwrap();
        let t = SearchTemplate::new(
            "books",
            "embedding",
            "L2",
            10,
            &params,
            vec!["category".into(), "price".into()],
            ConsistencyLevel::Bounded,
        );
        let vectors: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
        for (database, filter, guarantee, dim) in [
            ("", None, 0, 4),
            ("shop", Some("category == \"A\""), 2, 4),
            ("", Some(""), u64::MAX, 12),
            ("db_1", None, 449_000_000_000_000_000, 3),
        ] {
            let framed = encode_search(database, &t, &vectors, dim, filter, guarantee);
            assert_eq!(framed[0], 0);
            let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
            assert_eq!(len, framed.len() - 5);
            let decoded = pbm::SearchRequest::decode(&framed[5..]).unwrap();
            let expected = search_request(database, &t, &vectors, dim, filter, guarantee);
            assert_eq!(
                decoded, expected,
                "database {database:?}, filter {filter:?}"
            );
            assert_eq!(
                placeholder_group_len(&vectors, dim),
                expected.placeholder_group.len()
            );
        }
    }

    #[test]
    fn search_params_are_the_pairs_pymilvus_sends() {
        let mut params = serde_json::Map::new();
        params.insert("ef".into(), serde_json::json!(64));
        let t = SearchTemplate::new(
            "c",
            "embedding",
            "L2",
            10,
            &params,
            vec![],
            ConsistencyLevel::Bounded,
        );
        let pairs: Vec<(&str, &str)> = t
            .search_params
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("topk", "10"),
                ("params", "{\"ef\":64}"),
                ("round_decimal", "-1"),
                ("ignore_growing", "False"),
                ("metric_type", "L2"),
                ("anns_field", "embedding"),
            ]
        );
    }

    #[test]
    fn search_results_are_split_per_query_by_topks() {
        let results = pbs::SearchResultData {
            num_queries: 3,
            top_k: 2,
            fields_data: vec![],
            scores: vec![0.1, 0.2, 0.3, 0.4, 0.5],
            ids: Some(pbs::IDs {
                id_field: Some(pbs::i_ds::IdField::IntId(pbs::LongArray {
                    data: vec![1, 2, 3, 4, 5],
                })),
            }),
            topks: vec![2, 1, 2],
            output_fields: vec![],
        };
        let hits = split_search_results(3, Some(results)).unwrap();
        assert_eq!(hits.nq, 3);
        assert_eq!(hits.ids, vec![vec![1, 2], vec![3], vec![4, 5]]);
        assert_eq!(hits.scores, vec![vec![0.1, 0.2], vec![0.3], vec![0.4, 0.5]]);
    }

    #[test]
    fn malformed_or_empty_search_results_do_not_panic() {
        let empty = split_search_results(2, None).unwrap();
        assert_eq!(empty.ids, vec![Vec::<i64>::new(), Vec::new()]);
        // topks claim more hits than there are ids and scores.
        let results = pbs::SearchResultData {
            num_queries: 2,
            top_k: 3,
            fields_data: vec![],
            scores: vec![0.5],
            ids: Some(pbs::IDs {
                id_field: Some(pbs::i_ds::IdField::IntId(pbs::LongArray {
                    data: vec![7, 8],
                })),
            }),
            topks: vec![3, -1],
            output_fields: vec![],
        };
        let hits = split_search_results(2, Some(results)).unwrap();
        assert_eq!(hits.ids, vec![vec![7, 8], vec![]]);
        assert_eq!(hits.scores, vec![vec![0.5], vec![]]);
    }

    fn status(error_code: i32, code: i32, reason: &str) -> pbc::Status {
        pbc::Status {
            error_code,
            reason: reason.into(),
            code,
            retriable: false,
            detail: String::new(),
        }
    }

    #[test]
    fn not_found_statuses_of_every_version_become_collection_not_found() {
        // Captured from Milvus 2.3.5.
        let v23 = status(
            1,
            100,
            "can't find collection collection not found[collection=470728649423069134]",
        );
        // 2.2 style and 2.4+ style.
        let v22 = status(4, 0, "collection demo does not exist");
        let v24 = status(0, 100, "collection not found[collection=demo]");
        for s in [v23, v22, v24] {
            let err = check_status("DescribeCollection", Some("demo"), Some(&s)).unwrap_err();
            assert!(
                matches!(&err, MilvusError::CollectionNotFound { name } if name == "demo"),
                "{err:?}"
            );
            assert_eq!(err.kind(), "collection_not_found");
        }
        assert!(check_status("X", None, Some(&status(0, 0, ""))).is_ok());
        assert!(check_status("X", None, None).is_ok());
    }

    #[test]
    fn auth_and_dimension_statuses_are_classified() {
        let err =
            check_status("Search", None, Some(&status(3, 0, "permission denied"))).unwrap_err();
        assert!(matches!(err, MilvusError::Auth { .. }));
        let err =
            check_status("Search", None, Some(&status(1, 1400, "not authenticated"))).unwrap_err();
        assert!(matches!(err, MilvusError::Auth { .. }));
        let err = check_status(
            "Insert",
            Some("c"),
            Some(&status(
                5,
                1100,
                "the dim (4) of field data(embedding) is not equal to schema dim (8)",
            )),
        )
        .unwrap_err();
        assert!(matches!(err, MilvusError::SchemaMismatch { .. }));
        let err = check_status(
            "CreateIndex",
            Some("c"),
            Some(&status(1, 1100, "invalid index type")),
        )
        .unwrap_err();
        assert_eq!(err.kind(), "milvus:1100");
        assert!(
            err.to_string()
                .contains("Milvus rejected CreateIndex: invalid index type")
        );
        let legacy = check_status("Flush", Some("c"), Some(&status(1, 0, "boom"))).unwrap_err();
        assert_eq!(legacy.kind(), "milvus:error_code:1");
    }

    fn server_error(code: i32, error_code: i32, retriable: bool) -> MilvusError {
        MilvusError::Server {
            method: "Test",
            code,
            error_code,
            reason: "test".into(),
            retriable,
        }
    }

    #[test]
    fn transient_errors_are_told_apart_from_permanent_ones() {
        let unavailable = MilvusError::Transport {
            method: "Search",
            status: tonic::Status::unavailable("connection refused"),
        };
        assert!(unavailable.is_transient());
        assert_eq!(unavailable.kind(), "grpc:UNAVAILABLE");
        let reset = MilvusError::Transport {
            method: "Search",
            status: tonic::Status::unknown("h2 error: connection reset by peer"),
        };
        assert!(reset.is_transient());
        let invalid = MilvusError::Transport {
            method: "Search",
            status: tonic::Status::invalid_argument("bad"),
        };
        assert!(!invalid.is_transient());
        assert!(server_error(8, 0, false).is_transient());
        assert!(server_error(0, 49, false).is_transient());
        assert!(server_error(65535, 1, true).is_transient());
        assert!(!server_error(65535, 1, false).is_transient());
        assert_eq!(server_error(65535, 1, false).kind(), "milvus:65535");
        assert!(
            !MilvusError::Timeout {
                method: "Search",
                after: Duration::from_secs(1)
            }
            .is_transient()
        );
        assert!(!MilvusError::CollectionNotFound { name: "c".into() }.is_transient());
        // An ambiguous UNAVAILABLE (request maybe applied) must not repeat an insert.
        assert!(!unavailable.proves_not_applied());
        assert!(server_error(8, 0, false).proves_not_applied());
    }

    #[test]
    fn grpc_auth_and_deadline_statuses_are_mapped() {
        let d = Duration::from_secs(3);
        let auth = MilvusError::from_grpc(
            "Connect",
            tonic::Status::unauthenticated(
                "auth check failure, please check username and password are correct",
            ),
            d,
        );
        assert!(matches!(auth, MilvusError::Auth { .. }));
        assert_eq!(auth.kind(), "auth");
        let late = MilvusError::from_grpc("Search", tonic::Status::cancelled("Timeout expired"), d);
        assert!(matches!(late, MilvusError::Timeout { method: "Search", after } if after == d));
        let late = MilvusError::from_grpc("Search", tonic::Status::deadline_exceeded("x"), d);
        assert_eq!(late.kind(), "timeout");
    }

    fn fast_policy(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn the_retry_helper_retries_transient_errors_until_success() {
        let calls = AtomicU32::new(0);
        let result = with_retry(&fast_policy(3), "Test", Idempotency::Safe, || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n < 3 {
                Err(MilvusError::Transport {
                    method: "Test",
                    status: tonic::Status::unavailable("down"),
                })
            } else {
                Ok(n)
            }
        })
        .await;
        assert_eq!(result.unwrap(), 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn the_retry_helper_gives_up_after_the_allowed_attempts() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> =
            with_retry(&fast_policy(3), "Test", Idempotency::Safe, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(server_error(8, 0, false))
            })
            .await;
        assert_eq!(result.unwrap_err().kind(), "milvus:8");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn the_retry_helper_never_retries_permanent_errors() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> =
            with_retry(&fast_policy(5), "Test", Idempotency::Safe, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(MilvusError::CollectionNotFound { name: "c".into() })
            })
            .await;
        assert!(matches!(
            result,
            Err(MilvusError::CollectionNotFound { .. })
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn unsafe_calls_retry_only_errors_that_prove_nothing_was_written() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> =
            with_retry(&fast_policy(5), "Insert", Idempotency::Unsafe, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(MilvusError::Transport {
                    method: "Insert",
                    status: tonic::Status::unavailable("connection lost mid-request"),
                })
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let calls = AtomicU32::new(0);
        let result: Result<(), _> =
            with_retry(&fast_policy(2), "Insert", Idempotency::Unsafe, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(server_error(0, 49, false))
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(p.backoff(2), Duration::from_millis(400));
        assert_eq!(p.backoff(3), Duration::from_millis(800));
        assert_eq!(p.backoff(10), Duration::from_secs(5));
        assert_eq!(p.backoff(100), Duration::from_secs(5));
    }

    #[test]
    fn index_params_are_read_in_flat_and_json_form() {
        let flat = index_info_from_params(
            "idx".into(),
            "embedding".into(),
            &[
                kv("M", "16".into()),
                kv("efConstruction", "200".into()),
                kv("metric_type", "L2".into()),
                kv("index_type", "HNSW".into()),
            ],
        );
        let json = index_info_from_params(
            "idx".into(),
            "embedding".into(),
            &[
                kv("index_type", "HNSW".into()),
                kv("metric_type", "L2".into()),
                kv("params", "{\"M\":16,\"efConstruction\":\"200\"}".into()),
            ],
        );
        for info in [flat, json] {
            assert_eq!(info.index_type, "HNSW");
            assert_eq!(info.metric_type, "L2");
            assert_eq!(
                info.params,
                BTreeMap::from([
                    ("M".to_string(), "16".to_string()),
                    ("efConstruction".to_string(), "200".to_string())
                ])
            );
        }
    }

    #[test]
    fn field_types_round_trip_through_the_schema_and_display_readably() {
        for t in [
            FieldType::Bool,
            FieldType::Int32,
            FieldType::Int64,
            FieldType::Float,
            FieldType::Double,
            FieldType::VarChar { max_length: 10 },
            FieldType::FloatVector { dim: 768 },
        ] {
            let (data_type, type_params) = t.to_schema("f").unwrap();
            let schema = pbs::FieldSchema {
                data_type: data_type as i32,
                type_params,
                ..Default::default()
            };
            assert_eq!(FieldType::from_schema(&schema), t);
        }
        assert_eq!(
            FieldType::FloatVector { dim: 8 }.to_string(),
            "FLOAT_VECTOR(dim=8)"
        );
        assert_eq!(
            FieldType::VarChar { max_length: 10 }.to_string(),
            "VARCHAR(max_length=10)"
        );
        let json = pbs::FieldSchema {
            data_type: pbs::DataType::Json as i32,
            ..Default::default()
        };
        assert_eq!(
            FieldType::from_schema(&json),
            FieldType::Unsupported {
                type_name: "JSON".into()
            }
        );
    }

    #[test]
    fn query_columns_are_decoded_from_field_data() {
        let vector = Column::FloatVector {
            name: "v".into(),
            dim: 2,
            data: vec![1.0, 2.0, 3.0, 4.0],
        };
        let text = Column::VarChar {
            name: "c".into(),
            data: vec!["A".into(), "B".into()],
        };
        for column in [vector, text] {
            let decoded = Column::from_field_data(column.to_field_data()).unwrap();
            assert_eq!(decoded, column);
            assert_eq!(decoded.len(), 2);
        }
        assert_eq!(Column::from_field_data(pbs::FieldData::default()), None);
    }
}
