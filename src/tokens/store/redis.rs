//! The shared store (`store.kind = "redis"`). Skeleton: being implemented.

use std::time::Duration;

use super::{StoreError, StoredAccount};
use crate::provider::Provider;
use crate::refresh::BoxFuture;

/// The shared Redis store.
#[derive(Debug)]
pub struct RedisStore(());

impl RedisStore {
    /// Connects to the Redis at `url`.
    pub async fn connect(url: &str, lock_ttl: Duration) -> Result<RedisStore, StoreError> {
        let _ = (url, lock_ttl);
        Err(StoreError("the redis store is not available yet".into()))
    }
}

impl super::Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }
    fn load(&self) -> BoxFuture<'_, Result<Vec<StoredAccount>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn save(&self, _: StoredAccount) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn remove<'a>(&'a self, _: Provider, _: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { false })
    }
}
