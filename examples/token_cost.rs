//! What the client-token check costs per request, in process (DESIGN.md, "Security").
//!
//! ```sh
//! cargo run --release --example token_cost
//! ```
//!
//! Times `Access::admit` (header lookup, SHA-256 of the token, constant-time comparison
//! with every configured digest) for a `GET` with a known `read` token, with 3 and with
//! 100 configured tokens, and for a request without a token (refused at the lookup).
//! Prints nanoseconds per call, the median of 5 batches.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use axum::http::{header, HeaderMap, HeaderValue, Method};
use meshkv::api::access::Access;
use meshkv::auth::ClientTokens;
use meshkv::metrics::Route;

const CALLS: u32 = 1_000_000;

fn access(tokens: usize) -> Access {
    let mut text = String::new();
    for i in 0..tokens {
        let role = ["read", "write", "admin"][i % 3];
        text.push_str(&format!("{role} {role}-token-{i:08}-5f0c2a9e7d1b63c8\n"));
    }
    Access {
        tokens: Arc::new(ClientTokens::parse(&text).expect("valid tokens")),
        metrics_open: false,
    }
}

fn median_ns(access: &Access, headers: &HeaderMap) -> f64 {
    let mut batches: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..CALLS {
                let _ = black_box(access.admit(Route::KvGet, &Method::GET, black_box(headers)));
            }
            started.elapsed().as_nanos() as f64 / f64::from(CALLS)
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[2]
}

fn main() {
    let mut with = HeaderMap::new();
    with.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7001"));
    with.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    with.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer read-token-00000000-5f0c2a9e7d1b63c8"),
    );
    let mut without = with.clone();
    without.remove(header::AUTHORIZATION);
    for tokens in [3, 100] {
        let access = access(tokens);
        assert!(access.admit(Route::KvGet, &Method::GET, &with).is_ok());
        println!(
            "{tokens:>3} tokens: GET with a read token {:.0} ns, without a token {:.0} ns",
            median_ns(&access, &with),
            median_ns(&access, &without)
        );
    }
}
