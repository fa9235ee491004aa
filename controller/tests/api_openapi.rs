//! The OpenAPI document: what `/v1/openapi.json` serves must equal the checked-in
//! `docs/openapi.json`, so that every API change shows as a diff in review.
//!
//! `FLOTILLA_UPDATE_OPENAPI=1 cargo test -p flotilla-controller --test api_openapi` rewrites it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use flotilla_controller::testing::TestCluster;
use tempfile::TempDir;
use tower::ServiceExt;

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

/// The first differing line with the lines before it, for the failure message.
fn diff_hint(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let first = w
        .iter()
        .zip(&g)
        .position(|(a, b)| a != b)
        .unwrap_or(w.len().min(g.len()));
    let mut out = format!(
        "first difference at line {} (- docs/openapi.json, + served):\n",
        first + 1
    );
    for l in &g[first.saturating_sub(3)..first] {
        out.push_str(&format!("    {l}\n"));
    }
    out.push_str(&format!(
        "  - {}\n",
        w.get(first).unwrap_or(&"<end of file>")
    ));
    out.push_str(&format!(
        "  + {}\n",
        g.get(first).unwrap_or(&"<end of file>")
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_openapi_served_document_matches_docs_openapi_json() -> Result<()> {
    let dir = TempDir::new()?;
    let cluster = TestCluster::new(dir.path());
    cluster.start_voters(1).await?;
    let node = cluster.node(1);
    node.wait_for_leader(Duration::from_secs(10)).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let token = flotilla_controller::auth::create_token(
        &node,
        flotilla_api::cluster::TokenRole::ReadOnly,
        None,
        "test".into(),
        now,
    )
    .await?;
    let router = flotilla_controller::api::router(node);
    let resp = router
        .oneshot(
            Request::get("/v1/openapi.json")
                .header("authorization", format!("Bearer {}", token.token))
                .body(Body::empty())?,
        )
        .await?;
    if resp.status() != StatusCode::OK {
        bail!("GET /v1/openapi.json: {}", resp.status());
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await?;
    let served: serde_json::Value = serde_json::from_slice(&bytes)?;
    let generated = flotilla_controller::api::openapi_json();
    if served != serde_json::from_str::<serde_json::Value>(&generated)? {
        bail!("the served document differs from api::openapi_json()");
    }

    let path = checked_in();
    if std::env::var_os("FLOTILLA_UPDATE_OPENAPI").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("rewrote {}", path.display());
        return Ok(());
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    if on_disk != generated {
        bail!(
            "docs/openapi.json is not the document the API serves.\n{}\nIf the API change is intended, run:\n  FLOTILLA_UPDATE_OPENAPI=1 cargo test -p flotilla-controller --test api_openapi\nand commit docs/openapi.json.",
            diff_hint(&on_disk, &generated)
        );
    }
    // Every operation names its error responses as problem documents.
    let paths = served["paths"].as_object().context("paths")?;
    for (p, ops) in paths {
        for (method, op) in ops.as_object().context("operations")? {
            if p == "/v1/health"
                || p == "/v1/ready"
                || (p == "/v1/cluster/join" && method == "post")
            {
                if op["security"] != serde_json::json!([{}]) {
                    bail!(
                        "{method} {p} is public but its security is {}",
                        op["security"]
                    );
                }

                continue;
            }
            for (status, r) in op["responses"].as_object().context("responses")? {
                if !r["description"].is_string() {
                    bail!(
                        "{method} {p} response {status} has no description (required by OpenAPI)"
                    );
                }
            }
            let has_problem = op["responses"].as_object().is_some_and(|r| {
                r.values()
                    .any(|v| v["content"]["application/problem+json"].is_object())
            });
            if !has_problem {
                bail!("{method} {p} documents no problem response");
            }
        }
    }
    Ok(())
}
