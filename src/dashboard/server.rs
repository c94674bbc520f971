//! The dashboard's HTTP server: routes, status codes and headers (see the endpoint table in
//! the module documentation of [`crate::dashboard`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::model::{Download, TestDetail};
use super::{SourceError, TestSource, charts, compare, pages};

type Source = Arc<dyn TestSource>;

/// Pages run only their own inline script and styles and talk only to this server.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; form-action 'self'";

/// Serves the dashboard of `source` on `listener` until the process ends (or the listener
/// fails).
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: Arc<dyn TestSource>,
) -> std::io::Result<()> {
    axum::serve(listener, router(source)).await
}

/// The dashboard's routes, for callers that serve it themselves.
pub fn router(source: Arc<dyn TestSource>) -> Router {
    Router::new()
        .route("/", get(list_page))
        .route("/compare", get(compare_page))
        .route("/tests/{ns}/{name}", get(test_page))
        .route("/tests/{ns}/{name}/fragment", get(test_fragment))
        .route("/tests/{ns}/{name}/{file}", get(download))
        .route("/api/tests", get(api_list))
        .route("/api/tests/{ns}/{name}", get(api_test))
        .route("/api/tests/{ns}/{name}/charts/{file}", get(api_chart))
        .route("/api/compare", get(api_compare))
        .fallback(fallback)
        .with_state(source)
}

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if content_type.starts_with("text/html") {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    r
}

fn html(status: StatusCode, body: String) -> Response {
    respond(status, "text/html; charset=utf-8", body.into_bytes())
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => respond(status, "application/json", body),
        Err(e) => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot serialise the answer: {e}"),
        ),
    }
}

fn api_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message, "status": status.as_u16() });
    respond(
        status,
        "application/json",
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

fn page_error(status: StatusCode, message: &str) -> Response {
    html(status, pages::error_page(status.as_u16(), message))
}

fn unknown_test(ns: &str, name: &str) -> String {
    format!("no test {ns}/{name}: GET /api/tests lists the tests this dashboard knows")
}

fn unavailable(e: &SourceError) -> String {
    format!("the list of tests is unavailable: {e}")
}

/// The test with its download URLs filled in.
async fn detail(source: &Source, ns: &str, name: &str) -> Result<Option<TestDetail>, SourceError> {
    let mut d = source.get(ns, name).await?;
    if let Some(d) = &mut d {
        for Download { name: file, url } in &mut d.downloads {
            *url = format!("/tests/{}/{}/{}", enc(ns), enc(name), enc(file));
        }
    }
    Ok(d)
}

/// Percent-encodes a path segment (names are DNS labels in a cluster, directory names
/// locally).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` and `+` of a query value.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of query parameter `key`.
fn query_param(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (decode(k) == key).then(|| decode(v))
    })
}

/// `ns/name` split in two.
fn test_ref(s: &str) -> Option<(String, String)> {
    let (ns, name) = s.trim().split_once('/')?;
    (!ns.is_empty() && !name.is_empty()).then(|| (ns.to_string(), name.to_string()))
}

async fn list_page(State(source): State<Source>, uri: Uri) -> Response {
    match source.list().await {
        Ok(tests) => {
            if query_param(&uri, "part").as_deref() == Some("rows") {
                html(StatusCode::OK, pages::list_rows(&tests))
            } else {
                html(StatusCode::OK, pages::list_page(&tests))
            }
        }
        Err(e) => page_error(StatusCode::SERVICE_UNAVAILABLE, &unavailable(&e)),
    }
}

async fn api_list(State(source): State<Source>) -> Response {
    match source.list().await {
        Ok(tests) => json(StatusCode::OK, &tests),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &unavailable(&e)),
    }
}

async fn test_page(
    State(source): State<Source>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match detail(&source, &ns, &name).await {
        Ok(Some(d)) => html(StatusCode::OK, pages::test_page(&d)),
        Ok(None) => page_error(StatusCode::NOT_FOUND, &unknown_test(&ns, &name)),
        Err(e) => page_error(StatusCode::SERVICE_UNAVAILABLE, &unavailable(&e)),
    }
}

async fn test_fragment(
    State(source): State<Source>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match detail(&source, &ns, &name).await {
        Ok(Some(d)) => html(StatusCode::OK, pages::test_sections(&d)),
        Ok(None) => page_error(StatusCode::NOT_FOUND, &unknown_test(&ns, &name)),
        Err(e) => page_error(StatusCode::SERVICE_UNAVAILABLE, &unavailable(&e)),
    }
}

async fn api_test(
    State(source): State<Source>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match detail(&source, &ns, &name).await {
        Ok(Some(d)) => json(StatusCode::OK, &d),
        Ok(None) => api_error(StatusCode::NOT_FOUND, &unknown_test(&ns, &name)),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &unavailable(&e)),
    }
}

async fn api_chart(
    State(source): State<Source>,
    Path((ns, name, file)): Path<(String, String, String)>,
) -> Response {
    let Some(kind) = file
        .strip_suffix(".svg")
        .filter(|k| charts::CHART_KINDS.contains(k))
    else {
        return api_error(
            StatusCode::NOT_FOUND,
            &format!(
                "no chart {file}: the charts are {}",
                charts::CHART_KINDS.map(|k| format!("{k}.svg")).join(", ")
            ),
        );
    };
    match detail(&source, &ns, &name).await {
        Ok(Some(d)) => match charts::render(kind, &d) {
            Some(svg) => respond(StatusCode::OK, "image/svg+xml", svg.into_bytes()),
            None => api_error(StatusCode::NOT_FOUND, &format!("no chart {file}")),
        },
        Ok(None) => api_error(StatusCode::NOT_FOUND, &unknown_test(&ns, &name)),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &unavailable(&e)),
    }
}

fn content_type(file: &str) -> &'static str {
    match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("json") => "application/json",
        Some("html") => "text/html; charset=utf-8",
        Some("csv") => "text/csv; charset=utf-8",
        _ => "application/octet-stream",
    }
}

async fn download(
    State(source): State<Source>,
    Path((ns, name, file)): Path<(String, String, String)>,
) -> Response {
    match source.file(&ns, &name, &file).await {
        Ok(Some(bytes)) => {
            let mut r = respond(StatusCode::OK, content_type(&file), bytes);
            if file.ends_with(".csv")
                && let Ok(v) =
                    HeaderValue::from_str(&format!("attachment; filename=\"{}\"", enc(&file)))
            {
                r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        Ok(None) => {
            let known = matches!(detail(&source, &ns, &name).await, Ok(Some(_)));
            let message = if known {
                format!("test {ns}/{name} has no file {file} (yet): its page lists the downloads")
            } else {
                unknown_test(&ns, &name)
            };
            page_error(StatusCode::NOT_FOUND, &message)
        }
        Err(e) => page_error(StatusCode::SERVICE_UNAVAILABLE, &unavailable(&e)),
    }
}

/// Both runs of a compare request, or the error response.
async fn compared(
    source: &Source,
    uri: &Uri,
    api: bool,
) -> Result<(TestDetail, TestDetail), Response> {
    let err = |status: StatusCode, m: &str| {
        if api {
            api_error(status, m)
        } else {
            page_error(status, m)
        }
    };
    let (Some(a), Some(b)) = (
        query_param(uri, "a").and_then(|s| test_ref(&s)),
        query_param(uri, "b").and_then(|s| test_ref(&s)),
    ) else {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "compare needs two tests: /compare?a=NAMESPACE/NAME&b=NAMESPACE/NAME (a is the baseline)",
        ));
    };
    let mut out = Vec::new();
    for (ns, name) in [a, b] {
        match detail(source, &ns, &name).await {
            Ok(Some(d)) => out.push(d),
            Ok(None) => return Err(err(StatusCode::NOT_FOUND, &unknown_test(&ns, &name))),
            Err(e) => return Err(err(StatusCode::SERVICE_UNAVAILABLE, &unavailable(&e))),
        }
    }
    match (out.pop(), out.pop()) {
        (Some(b), Some(a)) => Ok((a, b)),
        _ => Err(err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "compare lost a test",
        )),
    }
}

async fn compare_page(State(source): State<Source>, uri: Uri) -> Response {
    match compared(&source, &uri, false).await {
        Ok((a, b)) => html(
            StatusCode::OK,
            pages::compare_page(&a, &b, &compare::compare(&a, &b)),
        ),
        Err(r) => r,
    }
}

async fn api_compare(State(source): State<Source>, uri: Uri) -> Response {
    match compared(&source, &uri, true).await {
        Ok((a, b)) => json(StatusCode::OK, &compare::compare(&a, &b)),
        Err(r) => r,
    }
}

async fn fallback(uri: Uri) -> Response {
    let message = format!(
        "nothing at {}: the dashboard serves /, /tests/NAMESPACE/NAME, /compare and /api/tests",
        uri.path()
    );
    if uri.path().starts_with("/api/") {
        api_error(StatusCode::NOT_FOUND, &message)
    } else {
        page_error(StatusCode::NOT_FOUND, &message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let uri: Uri = "/compare?a=local%2Frun-1&b=local/run+2&c=%zz"
            .parse()
            .unwrap();
        assert_eq!(query_param(&uri, "a").as_deref(), Some("local/run-1"));
        assert_eq!(query_param(&uri, "b").as_deref(), Some("local/run 2"));
        assert_eq!(query_param(&uri, "c").as_deref(), Some("%zz"));
        assert_eq!(query_param(&uri, "d"), None);
        assert_eq!(test_ref("ns/name"), Some(("ns".into(), "name".into())));
        assert_eq!(test_ref("name"), None);
        assert_eq!(enc("a b/é"), "a%20b%2F%C3%A9");
    }
}
