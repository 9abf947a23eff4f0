//! Test support: the administrative writes of [`crate::admin`], and clients for a local
//! emulator with dummy credentials.

pub use crate::admin::*;
use aws_sdk_dynamodb::Client;

/// An SDK configuration for a local emulator: the endpoint, a region and dummy static
/// credentials (`testing`/`testing`).
pub async fn local_sdk_config(endpoint_url: &str, region: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .endpoint_url(endpoint_url)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "zael-testing",
        ))
        .load()
        .await
}

/// A DynamoDB client for a local emulator (see [`local_sdk_config`]).
pub async fn local_client(endpoint_url: &str, region: &str) -> Client {
    Client::new(&local_sdk_config(endpoint_url, region).await)
}
