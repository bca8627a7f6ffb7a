//! The embedded durable store (`store.kind = "file"`): one [redb] database file on this machine.
//!
//! * **Format.** One table, `accounts`, from `"{provider}/{account}"` to the account's state as
//!   JSON (a private, versioned record: tokens, expiry, generation, re-authorisation flag, last
//!   refresh and error, and the seed fingerprint of SPEC 4.2).
//! * **Durability.** Every [`save`](Store::save) and [`remove`](Store::remove) is one redb write
//!   transaction committed with immediate durability (checksummed copy-on-write commit, fsync)
//!   and returns only once it is on disk. With the default [`Store::refresh`] this writes a
//!   rotated refresh token **before** the new access token is handed to any request (SPEC 4.8).
//!   A `kill -9` at any point leaves either the previous or the new commit: never a torn file,
//!   never a lost rotation that a request has already used.
//! * **Creation.** A new store is built in a temporary file next to `path` (mode 0600, fully
//!   initialised and committed), then linked into place, so a crash during creation never leaves
//!   a half-initialised file behind. An existing file whose permissions are wider than 0600 is
//!   narrowed to 0600 once it has been opened successfully.
//! * **Opening** verifies the whole file (redb's integrity check and every record): a file that
//!   is not a redb database, is truncated, fails a checksum, holds a malformed record, is a
//!   directory, is unreadable, or is in use by another process is a one-line [`StoreError`] that
//!   names the path and the reason, and never a token.
//! * **Health** ([`ready`](Store::ready)): a read transaction succeeds, the last write did not
//!   fail, and the file at `path` is still the one this store has open.
//!
//! redb is synchronous: every database call runs on tokio's blocking pool, so
//! [`FileStore::open`] may run anywhere but the [`Store`] methods must be awaited inside a tokio
//! runtime.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::{
    Builder, Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    StorageError, TableDefinition, TableError,
};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, StoredAccount};
use crate::provider::Provider;
use crate::refresh::BoxFuture;
use crate::token::Secret;

/// The one table: `"{provider}/{account}"` → the account's [`Record`] as JSON.
const ACCOUNTS: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("accounts");

/// The version of [`Record`] written by this build.
const RECORD_VERSION: u32 = 1;

/// The mode of the store file: read and write for the owner only (SPEC 5).
const FILE_MODE: u32 = 0o600;

/// The embedded durable store. Cheap to share behind an `Arc<dyn Store>`.
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// (device, inode) of the file this store has open, to notice it being replaced or removed.
    identity: (u64, u64),
    /// Whether the last write succeeded.
    writes_ok: AtomicBool,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// One account as stored. Holds secrets: deliberately not `Debug`.
#[derive(Serialize, Deserialize)]
struct Record {
    v: u32,
    provider: String,
    account: String,
    refresh_token: String,
    access_token: Option<String>,
    expires_at: Option<u64>,
    generation: u64,
    needs_reauth: bool,
    last_refresh_at: Option<u64>,
    last_error: Option<String>,
    seed_fingerprint: Option<String>,
}

fn key(provider: Provider, account: &str) -> String {
    format!("{provider}/{account}")
}

fn encode(a: &StoredAccount) -> Vec<u8> {
    let record = Record {
        v: RECORD_VERSION,
        provider: a.provider.as_str().to_string(),
        account: a.account.clone(),
        refresh_token: a.refresh_token.expose().to_string(),
        access_token: a.access_token.as_ref().map(|s| s.expose().to_string()),
        expires_at: a.expires_at,
        generation: a.generation,
        needs_reauth: a.needs_reauth,
        last_refresh_at: a.last_refresh_at,
        last_error: a.last_error.clone(),
        seed_fingerprint: a.seed_fingerprint.clone(),
    };
    serde_json::to_vec(&record).expect("a record always serialises")
}

/// Decodes a stored value. The error never quotes the value (it holds tokens).
fn decode(bytes: &[u8]) -> Result<StoredAccount, String> {
    let r: Record = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "a stored account record is malformed ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    if r.v != RECORD_VERSION {
        return Err(format!(
            "a stored account record has version {} (this build reads version {RECORD_VERSION})",
            r.v
        ));
    }
    let provider = r
        .provider
        .parse::<Provider>()
        .map_err(|_| "a stored account record names an unknown provider".to_string())?;
    Ok(StoredAccount {
        provider,
        account: r.account,
        refresh_token: Secret::new(r.refresh_token),
        access_token: r.access_token.map(Secret::new),
        expires_at: r.expires_at,
        generation: r.generation,
        needs_reauth: r.needs_reauth,
        last_refresh_at: r.last_refresh_at,
        last_error: r.last_error,
        seed_fingerprint: r.seed_fingerprint,
    })
}

/// One line, whatever the underlying message holds.
fn one_line(s: impl std::fmt::Display) -> String {
    s.to_string().replace(['\n', '\r'], " ")
}

impl Inner {
    fn err(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError(format!("{}: {what}: {}", self.path.display(), one_line(e)))
    }

    fn read_all(&self) -> Result<Vec<StoredAccount>, StoreError> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| self.err("cannot read", e))?;
        let table = match tx.open_table(ACCOUNTS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err("cannot read", e)),
        };
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.err("cannot read", e))? {
            let (_, value) = item.map_err(|e| self.err("cannot read", e))?;
            out.push(decode(value.value()).map_err(|e| self.err("corrupted", e))?);
        }
        Ok(out)
    }

    /// Runs one write transaction on the accounts table and commits it durably.
    fn write(
        &self,
        what: &str,
        f: impl FnOnce(&mut redb::Table<'_, &'static [u8], &'static [u8]>) -> Result<(), StorageError>,
    ) -> Result<(), StoreError> {
        let result = (|| -> Result<(), StoreError> {
            let tx = self.db.begin_write().map_err(|e| self.err(what, e))?;
            {
                let mut table = tx.open_table(ACCOUNTS).map_err(|e| self.err(what, e))?;
                f(&mut table).map_err(|e| self.err(what, e))?;
            }
            tx.commit().map_err(|e| self.err(what, e))
        })();
        self.writes_ok.store(result.is_ok(), Ordering::Release);
        result
    }

    fn healthy(&self) -> bool {
        if !self.writes_ok.load(Ordering::Acquire) {
            return false;
        }
        let readable = self
            .db
            .begin_read()
            .ok()
            .is_some_and(|tx| match tx.open_table(ACCOUNTS) {
                Ok(t) => t.len().is_ok(),
                Err(TableError::TableDoesNotExist(_)) => true,
                Err(_) => false,
            });
        let same_file =
            std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.identity);
        readable && same_file
    }
}

impl FileStore {
    /// Opens (or creates, mode 0600) the store file at `path`.
    ///
    /// A new file is created fully initialised or not at all. An existing file is verified
    /// (redb's integrity check, then every record) and its permissions are narrowed to 0600 if
    /// they were wider. Every failure is one line naming `path` and the reason.
    pub fn open(path: &Path) -> Result<FileStore, StoreError> {
        let shown = path.display().to_string();
        let fail = |what: &str| StoreError(format!("{shown}: {what}"));
        let (db, file_mode, identity) = match std::fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match create_new(path)? {
                Some(created) => created,
                // Someone else created it meanwhile: open theirs.
                None => open_existing(path)?,
            },
            Err(e) => return Err(fail(&format!("cannot open: {}", one_line(e)))),
            Ok(_) => open_existing(path)?,
        };
        let inner = Inner {
            db,
            path: path.to_path_buf(),
            identity,
            writes_ok: AtomicBool::new(true),
        };
        // Creates the table on a fresh file and proves the file writable.
        inner.write("cannot write", |_| Ok(()))?;
        // A record this build cannot read is a start-up error, not a surprise later.
        let accounts = inner.read_all()?;
        if file_mode & 0o777 != FILE_MODE {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE)).map_err(
                |e| {
                    fail(&format!(
                        "permissions are {:o}, wider than {FILE_MODE:o}, and cannot be narrowed: {}",
                        file_mode & 0o777,
                        one_line(e)
                    ))
                },
            )?;
            tracing::warn!(path = %shown, previous = %format!("{:o}", file_mode & 0o777),
                "the token store file's permissions were narrowed to 600");
        }
        tracing::debug!(path = %shown, accounts = accounts.len(), "file token store opened");
        Ok(FileStore {
            inner: Arc::new(inner),
        })
    }

    /// The path of the store file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the blocking pool. The write it does completes even if the caller stops
    /// waiting.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(r) => r,
            Err(e) => Err(StoreError(format!(
                "{}: store operation {}",
                self.inner.path.display(),
                if e.is_panic() {
                    "panicked"
                } else {
                    "cancelled"
                }
            ))),
        }
    }
}

/// The redb builder used for every open: the integrity of the whole file is verified, so a
/// file altered outside redb is an error rather than trusted.
fn builder() -> Builder {
    let mut b = Builder::new();
    b.set_check_integrity_on_open(true);
    b
}

/// Explains a redb open failure in one line.
fn describe(e: &DatabaseError) -> String {
    match e {
        DatabaseError::DatabaseAlreadyOpen => {
            "the file is already in use by another process (is another proxy running?)".into()
        }
        DatabaseError::UpgradeRequired(v) => {
            format!("the file uses an older database format (version {v}) and must be upgraded")
        }
        DatabaseError::RepairAborted => "corrupted: the database could not be repaired".into(),
        DatabaseError::Storage(StorageError::Corrupted(m)) => {
            format!(
                "corrupted (not a valid token store database): {}",
                one_line(m)
            )
        }
        DatabaseError::Storage(StorageError::Io(io)) if io.kind() == io::ErrorKind::InvalidData => {
            format!("not a token store database ({})", one_line(io))
        }
        DatabaseError::Storage(StorageError::Io(io))
            if io.kind() == io::ErrorKind::UnexpectedEof =>
        {
            format!("corrupted (the file is truncated): {}", one_line(io))
        }
        other => format!("cannot open the database: {}", one_line(other)),
    }
}

/// Opens `file` as a redb database (initialising it when empty). redb may panic on some
/// corrupted files in debug builds; that is reported as corruption too.
fn open_db(shown: &str, file: File) -> Result<Database, StoreError> {
    let backend = FileBackend::new(file)
        .map_err(|e| StoreError(format!("{shown}: cannot open: {}", describe(&e))))?;
    match catch_unwind(AssertUnwindSafe(|| builder().create_with_backend(backend))) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(StoreError(format!("{shown}: {}", describe(&e)))),
        Err(_) => Err(StoreError(format!(
            "{shown}: corrupted (not a valid token store database)"
        ))),
    }
}

type Opened = (Database, u32, (u64, u64));

fn open_existing(path: &Path) -> Result<Opened, StoreError> {
    let shown = path.display().to_string();
    let fail = |what: String| StoreError(format!("{shown}: {what}"));
    let meta =
        std::fs::metadata(path).map_err(|e| fail(format!("cannot open: {}", one_line(e))))?;
    if meta.is_dir() {
        return Err(fail("is a directory, not a token store file".into()));
    }
    if !meta.is_file() {
        return Err(fail("is not a regular file".into()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| {
            fail(format!(
                "cannot open for reading and writing: {}",
                one_line(e)
            ))
        })?;
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot open: {}", one_line(e))))?;
    if !meta.is_file() {
        return Err(fail("is not a regular file".into()));
    }
    let db = open_db(&shown, file)?;
    Ok((db, meta.mode(), (meta.dev(), meta.ino())))
}

/// Creates a new, initialised store at `path` without ever exposing a half-written file there.
/// `None` when another process created `path` first.
fn create_new(path: &Path) -> Result<Option<Opened>, StoreError> {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let shown = path.display().to_string();
    let fail = |what: &str, e: io::Error| StoreError(format!("{shown}: {what}: {}", one_line(e)));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| StoreError(format!("{shown}: not a file path")))?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.new",
        name.to_string_lossy(),
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(|e| fail("cannot create", e))?;
    let cleanup = |e: StoreError| {
        let _ = std::fs::remove_file(&tmp);
        e
    };
    // The umask may have narrowed the mode further: make it exactly 0600.
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .map_err(|e| cleanup(fail("cannot create", e)))?;
    let meta = file
        .metadata()
        .map_err(|e| cleanup(fail("cannot create", e)))?;
    let db = open_db(&shown, file).map_err(cleanup)?;
    // Initialise the table and make it durable before the file appears under its name.
    {
        let init = || -> Result<(), String> {
            let tx = db.begin_write().map_err(one_line)?;
            tx.open_table(ACCOUNTS).map_err(one_line)?;
            tx.commit().map_err(one_line)
        };
        init().map_err(|e| cleanup(StoreError(format!("{shown}: cannot create: {e}"))))?;
    }
    match std::fs::hard_link(&tmp, path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            drop(db);
            let _ = std::fs::remove_file(&tmp);
            return Ok(None);
        }
        // A filesystem without hard links: an atomic rename instead.
        Err(_) => std::fs::rename(&tmp, path).map_err(|e| cleanup(fail("cannot create", e)))?,
    }
    let _ = std::fs::remove_file(&tmp);
    // Make the new name durable too.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(Some((db, FILE_MODE, (meta.dev(), meta.ino()))))
}

impl Store for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn load(&self) -> BoxFuture<'_, Result<Vec<StoredAccount>, StoreError>> {
        Box::pin(self.blocking(|inner| inner.read_all()))
    }

    fn save(&self, account: StoredAccount) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.blocking(move |inner| {
            let key = key(account.provider, &account.account);
            let value = encode(&account);
            inner.write("cannot save", |t| {
                t.insert(key.as_bytes(), value.as_slice()).map(|_| ())
            })
        }))
    }

    fn remove<'a>(
        &'a self,
        provider: Provider,
        account: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let key = key(provider, account);
        Box::pin(self.blocking(move |inner| {
            inner.write("cannot remove", |t| t.remove(key.as_bytes()).map(|_| ()))
        }))
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            self.blocking(|inner| Ok(inner.healthy()))
                .await
                .unwrap_or(false)
        })
    }
}
