//! An LLM gateway on the native API: reserve the estimated tokens before the call, reconcile
//! with the real count after it, give everything back when the call fails.
//!
//! ```sh
//! zael-server --entities examples/native-api/entities.yaml --lease-key "$(openssl rand -hex 32)" &
//! cargo run -p zael-api --example llm_gateway -- http://127.0.0.1:8081
//! ```

use std::collections::HashMap;
use tonic::Code;
use zael_api::limiter_client::LimiterClient;
use zael_api::{AcquireRequest, AdjustRequest, ReleaseRequest, RollbackRequest};

/// Stands in for the model call: the tokens it really used, or an error.
async fn call_model(prompt: &str) -> Result<i64, String> {
    Ok(prompt.len() as i64 * 3)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:8081".into());
    let mut limiter = LimiterClient::connect(endpoint).await?;
    let prompt = "Explain token buckets in one paragraph.";
    let estimate = 500;

    let acquired = limiter
        .acquire(AcquireRequest {
            namespace: "demo".into(),
            entity_id: "key-1".into(),
            resource: "gpt-4".into(),
            consume: HashMap::from([("rpm".into(), 1), ("tpm".into(), estimate)]),
            request_id: format!("req-{}", std::process::id()), // a retry of this call charges once
            ..Default::default()
        })
        .await;
    let lease = match acquired {
        Ok(response) => response.into_inner().lease_id,
        Err(status) if status.code() == Code::ResourceExhausted => {
            // The details carry zael.limiter.v1.RateLimitExceeded (every limit, retry_after_ms).
            println!("429: {}", status.message());
            return Ok(());
        }
        Err(status) => return Err(status.into()),
    };

    match call_model(prompt).await {
        Ok(used) => {
            let adjusted = limiter
                .adjust(AdjustRequest { lease_id: lease, deltas: HashMap::from([("tpm".into(), used - estimate)]) })
                .await?
                .into_inner();
            limiter.release(ReleaseRequest { lease_id: adjusted.lease_id }).await?;
            println!("used {used} tokens");
        }
        Err(e) => {
            limiter.rollback(RollbackRequest { lease_id: lease }).await?;
            println!("model call failed ({e}); rolled back");
        }
    }
    Ok(())
}
