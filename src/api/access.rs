//! Who may send which request, when client tokens are configured (API.md §3.6).
//!
//! Owns: the role each route needs ([`required`]), reading the `Authorization: Bearer`
//! header, and the `401`/`403` answers. It runs before anything else looks at a
//! request, so a refused request changes nothing and costs a header lookup and one
//! SHA-256; without tokens configured the API does not call it at all.
//! Knows nothing of: how tokens are stored and compared ([`ClientTokens`] does that in
//! constant time), or where they come from (the cluster file). It never logs, and no
//! answer repeats what the client sent.

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::auth::{ClientTokens, Role};
use crate::metrics::Route;

/// The configured tokens and what stays open.
#[derive(Clone, Debug)]
pub struct Access {
    /// The tokens and their roles.
    pub tokens: Arc<ClientTokens>,
    /// `/metrics` needs no token.
    pub metrics_open: bool,
}

/// The role a request of `route` with `method` needs; `None`: open to anyone.
///
/// Open: `/health`, the dashboard page (static; its data calls carry a token), and the
/// CORS preflight of `/v1/cluster` (a browser sends it without credentials before a
/// cross-origin `GET` that carries one). `read`: reads of keys, listings, watches,
/// convergence, and whatever else is not listed (unknown routes answer 404 only to a
/// known token). `write`: any other method on a key. `admin`: `/v1/cluster`,
/// `/v1/conflicts` and `/metrics` (unless `metrics_open`).
pub fn required(route: Route, method: &Method, metrics_open: bool) -> Option<Role> {
    match route {
        Route::Health | Route::Dashboard => None,
        Route::Cluster if method == Method::OPTIONS => None,
        Route::Metrics if metrics_open => None,
        Route::Cluster | Route::Conflicts | Route::Metrics => Some(Role::Admin),
        Route::KvPut | Route::KvDelete => Some(Role::Write),
        // `/v1/kv/` (no key), and other methods on a key: a method that is not a read
        // needs the write role, even though the API then refuses it.
        Route::KvOther if method != Method::GET && method != Method::HEAD => Some(Role::Write),
        Route::KvGet
        | Route::KvOther
        | Route::KvList
        | Route::Watch
        | Route::Convergence
        | Route::Unmatched => Some(Role::Read),
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`.
    Malformed,
    /// A token that is not configured.
    Unknown,
    /// A known token whose role does not include the one needed.
    Forbidden {
        /// The token's role.
        has: Role,
        /// The role the request needs.
        needs: Role,
    },
}

impl Refusal {
    /// `401` or `403`.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Forbidden { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let message = match self {
            Refusal::Missing => {
                "this node requires a client token: send `Authorization: Bearer <token>`".to_owned()
            }
            Refusal::Malformed => "the Authorization header is not `Bearer <token>`".to_owned(),
            Refusal::Unknown => "the client token is not known to this node".to_owned(),
            Refusal::Forbidden { has, needs } => format!(
                "this request needs a token of role {needs} or above; this token's role is {has}"
            ),
        };
        let mut response = ApiError::new(self.status(), message).into_response();
        if self.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"meshkv\""),
            );
        }
        response
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive); `None` when the header has another shape.
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes();
    let (scheme, rest) = bytes.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

impl Access {
    /// Lets a request through, or says why not. No allocation.
    pub fn admit(&self, route: Route, method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(needs) = required(route, method, self.metrics_open) else {
            return Ok(());
        };
        let value = headers.get(header::AUTHORIZATION).ok_or(Refusal::Missing)?;
        let token = bearer(value).ok_or(Refusal::Malformed)?;
        let has = self.tokens.role_of(token).ok_or(Refusal::Unknown)?;
        if has.allows(needs) {
            Ok(())
        } else {
            Err(Refusal::Forbidden { has, needs })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: &str = "read-token-0123456789";
    const WRITE: &str = "write-token-0123456789";
    const ADMIN: &str = "admin-token-0123456789";

    fn access(metrics_open: bool) -> Access {
        let text = format!("read {READ}\nwrite {WRITE}\nadmin {ADMIN}\n");
        Access {
            tokens: Arc::new(ClientTokens::parse(&text).unwrap()),
            metrics_open,
        }
    }

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn the_role_table() {
        use Route::*;
        let get = Method::GET;
        let cases: &[(Route, Method, Option<Role>)] = &[
            (Health, get.clone(), None),
            (Dashboard, get.clone(), None),
            (Cluster, Method::OPTIONS, None),
            (KvGet, get.clone(), Some(Role::Read)),
            (KvOther, Method::HEAD, Some(Role::Read)),
            (KvOther, Method::POST, Some(Role::Write)),
            (KvList, get.clone(), Some(Role::Read)),
            (Watch, get.clone(), Some(Role::Read)),
            (Convergence, get.clone(), Some(Role::Read)),
            (Unmatched, get.clone(), Some(Role::Read)),
            (KvPut, Method::PUT, Some(Role::Write)),
            (KvDelete, Method::DELETE, Some(Role::Write)),
            (Cluster, get.clone(), Some(Role::Admin)),
            (Conflicts, get.clone(), Some(Role::Admin)),
            (Metrics, get.clone(), Some(Role::Admin)),
        ];
        for (route, method, role) in cases {
            assert_eq!(required(*route, method, false), *role, "{route:?} {method}");
        }
        assert_eq!(required(Metrics, &get, true), None);
        assert_eq!(required(Cluster, &get, true), Some(Role::Admin));
        // Every route is in the table.
        for route in Route::ALL {
            let _ = required(route, &get, false);
        }
    }

    #[test]
    fn tokens_are_read_from_the_bearer_header() {
        let access = access(false);
        let admit = |route, auth: Option<&str>| access.admit(route, &Method::GET, &headers(auth));
        assert_eq!(admit(Route::Health, None), Ok(()));
        assert_eq!(admit(Route::KvGet, None), Err(Refusal::Missing));
        assert_eq!(admit(Route::KvGet, Some(READ)), Err(Refusal::Malformed));
        assert_eq!(
            admit(Route::KvGet, Some(&format!("Basic {READ}"))),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            admit(Route::KvGet, Some("Bearer ")),
            Err(Refusal::Malformed)
        );
        assert_eq!(admit(Route::KvGet, Some("Bearer")), Err(Refusal::Malformed));
        assert_eq!(
            admit(Route::KvGet, Some(&format!("Bearer{READ}"))),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            admit(Route::KvGet, Some("Bearer not-a-configured-token")),
            Err(Refusal::Unknown)
        );
        assert_eq!(admit(Route::KvGet, Some(&format!("Bearer {READ}"))), Ok(()));
        assert_eq!(
            admit(Route::KvGet, Some(&format!("bearer  {READ} "))),
            Ok(())
        );
        assert_eq!(
            admit(Route::Metrics, Some(&format!("Bearer {WRITE}"))),
            Err(Refusal::Forbidden {
                has: Role::Write,
                needs: Role::Admin
            })
        );
        assert_eq!(
            admit(Route::Metrics, Some(&format!("Bearer {ADMIN}"))),
            Ok(())
        );
        let put = access.admit(
            Route::KvPut,
            &Method::PUT,
            &headers(Some(&format!("Bearer {READ}"))),
        );
        assert_eq!(
            put,
            Err(Refusal::Forbidden {
                has: Role::Read,
                needs: Role::Write
            })
        );
    }

    #[test]
    fn refusals_answer_the_json_error_and_never_the_token() {
        let response = Refusal::Missing.into_response();
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"meshkv\""
        );
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let response = Refusal::Forbidden {
            has: Role::Read,
            needs: Role::Write,
        }
        .into_response();
        assert_eq!(response.status(), 403);
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
        assert!(!format!("{:?}", access(false)).contains("token-0123"));
    }
}
