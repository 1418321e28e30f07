//! `stocknet ceiling`: a bare axum handler answering `GET /stocks/{name}` with the same JSON
//! envelope as the frontend, from a fixed in-memory table and with none of the frontend's
//! work (cache, envelope layers, catalog). Benchmarks compare the frontend's cached lookups
//! against it: the most an axum service can do on the same machine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

#[derive(Debug, Clone, clap::Args)]
pub struct CeilingConfig {
    /// Port to listen on, on 127.0.0.1.
    #[arg(long, default_value_t = 8099)]
    pub port: u16,
}

/// The handler over the built-in catalog, each answer serialized once up front.
fn router() -> anyhow::Result<Router> {
    let mut reader = csv::Reader::from_reader(stocknet_catalog::DEFAULT_CATALOG.as_bytes());
    let mut table = HashMap::new();
    for stock in reader.deserialize::<stocknet_common::Stock>() {
        let stock = stock?;
        let body = serde_json::to_vec(&serde_json::json!({ "data": stock }))?;
        table.insert(stock.name, body);
    }
    Ok(Router::new()
        .route("/stocks/{name}", get(lookup))
        .with_state(Arc::new(table)))
}

pub async fn run(config: CeilingConfig) -> anyhow::Result<()> {
    let app = router()?;
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], config.port))).await?;
    tracing::info!(address = %listener.local_addr()?, "bare axum ceiling listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(stocknet_common::server::shutdown_signal())
        .await?;
    Ok(())
}

async fn lookup(
    State(table): State<Arc<HashMap<String, Vec<u8>>>>,
    Path(name): Path<String>,
) -> Response {
    match table.get(&name) {
        Some(body) => ([("content-type", "application/json")], body.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    /// `GET uri` through the ceiling's router: the status and the whole body.
    async fn answer(uri: &str) -> (StatusCode, axum::body::Bytes) {
        let request = Request::get(uri).body(Body::empty()).unwrap();
        let response = router().unwrap().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, body)
    }

    #[tokio::test]
    async fn answers_like_the_frontend_does() {
        let (status, body) = answer("/stocks/GameStart").await;
        assert_eq!(status, StatusCode::OK);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"data": {"name": "GameStart", "price": 15.99, "quantity": 100}})
        );
        assert_eq!(answer("/stocks/Nope").await.0, StatusCode::NOT_FOUND);
    }
}
