//! The embedded durable store (`store.kind = "file"`). Skeleton: being implemented.

use std::path::Path;

use super::{StoreError, StoredAccount};
use crate::provider::Provider;
use crate::refresh::BoxFuture;

/// The embedded durable store.
#[derive(Debug)]
pub struct FileStore(());

impl FileStore {
    /// Opens (or creates, mode 0600) the store file at `path`.
    pub fn open(path: &Path) -> Result<FileStore, StoreError> {
        Err(StoreError(format!(
            "{}: the file store is not available yet",
            path.display()
        )))
    }
}

impl super::Store for FileStore {
    fn kind(&self) -> &'static str {
        "file"
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
