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

use super::record::{Codec, Encryption, Generation, RecordError, RecordGeneration, Sealing};
use super::{Store, StoreError, StoredAccount};
use crate::provider::Provider;
use crate::refresh::BoxFuture;

/// The one table: `"{provider}/{account}"` → the account's record (see [`super::record`]).
const ACCOUNTS: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("accounts");

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
    /// Records in and out, sealed when an encryption key is configured.
    codec: Codec,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn key(provider: Provider, account: &str) -> String {
    format!("{provider}/{account}")
}

/// The provider and account a table key names (`"{provider}/{account}"`).
fn parse_key(key: &[u8]) -> Result<(Provider, &str), String> {
    std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.split_once('/'))
        .and_then(|(p, a)| Some((p.parse::<Provider>().ok()?, a)))
        .ok_or_else(|| "a stored account key is not provider/account".to_string())
}

/// One line, whatever the underlying message holds.
fn one_line(s: impl std::fmt::Display) -> String {
    s.to_string().replace(['\n', '\r'], " ")
}

/// Every record of `db`, opened by `codec`, with how it was sealed; fails (naming `path`) on
/// the first record that cannot be opened (malformed, or not openable with the keys).
fn read_records(
    db: &impl ReadableDatabase,
    codec: &Codec,
    path: &Path,
) -> Result<Vec<(StoredAccount, Sealing)>, StoreError> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        StoreError(format!("{}: {what}: {}", path.display(), one_line(e)))
    };
    let tx = db.begin_read().map_err(|e| err("cannot read", &e))?;
    let table = match tx.open_table(ACCOUNTS) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(err("cannot read", &e)),
    };
    let mut out = Vec::new();
    for item in table.iter().map_err(|e| err("cannot read", &e))? {
        let (key, value) = item.map_err(|e| err("cannot read", &e))?;
        let under = parse_key(key.value()).map_err(|e| err("corrupted", &e))?;
        let opened = codec
            .decode(under, value.value(), Generation::InRecord)
            .map_err(|e| match e {
                RecordError::Malformed(m) => err("corrupted", &m),
                RecordError::Sealing(m) => err("cannot open", &m),
            })?;
        out.push(opened);
    }
    Ok(out)
}

impl Inner {
    fn err(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError(format!("{}: {what}: {}", self.path.display(), one_line(e)))
    }

    fn read_all(&self) -> Result<Vec<StoredAccount>, StoreError> {
        Ok(self
            .read_all_sealing()?
            .into_iter()
            .map(|(a, _)| a)
            .collect())
    }

    /// Every record, opened, with how it was sealed. Fails on the first record that cannot be
    /// opened (malformed, or not openable with the configured keys).
    fn read_all_sealing(&self) -> Result<Vec<(StoredAccount, Sealing)>, StoreError> {
        read_records(&self.db, &self.codec, &self.path)
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
    ///
    /// ```
    /// # use oauth_refresh_proxy::store::file::FileStore;
    /// let dir = std::env::temp_dir().join(format!("orp-doc-open-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let store = FileStore::open(&dir.join("tokens.db")).unwrap();
    /// assert!(store.path().ends_with("tokens.db"));
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn open(path: &Path) -> Result<FileStore, StoreError> {
        FileStore::open_with(path, None)
    }

    /// Like [`open`](FileStore::open), with the tokens sealed by `encryption` when given
    /// (encryption at rest; see [`Encryption`] for the rules). A record the keys cannot open is
    /// an error naming `path`, and the file is left as it was. With
    /// [`Encryption::encrypt_existing`], records written with no key are sealed here, all in
    /// one transaction.
    ///
    /// ```
    /// # use oauth_refresh_proxy::{store::{file::FileStore, Encryption}, Secret};
    /// let dir = std::env::temp_dir().join(format!("orp-doc-sealed-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let key = Secret::new("q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=");
    /// let store = FileStore::open_with(&dir.join("tokens.db"), Some(Encryption::new(&key)?))?;
    /// # drop(store);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_with(path: &Path, encryption: Option<Encryption>) -> Result<FileStore, StoreError> {
        let shown = path.display().to_string();
        let fail = |what: &str| StoreError(format!("{shown}: {what}"));
        let codec = Codec::new(encryption);
        let (db, file_mode, identity) = match std::fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match create_new(path)? {
                Some(created) => created,
                // Someone else created it meanwhile: open theirs.
                None => open_existing(path)?,
            },
            Err(e) => return Err(fail(&format!("cannot open: {}", one_line(e)))),
            Ok(_) => open_existing(path)?,
        };
        let mut inner = Inner {
            db,
            path: path.to_path_buf(),
            identity,
            writes_ok: AtomicBool::new(true),
            codec,
        };
        // A record this build (or these keys) cannot open is a start-up error, not a surprise
        // later — found before anything is written, so such a file is left untouched.
        let accounts = inner.read_all_sealing()?;
        // Creates the table on a fresh file and proves the file writable; with
        // `encrypt_existing`, seals the records written with no key, all in this one commit.
        let clear: Vec<&StoredAccount> = accounts
            .iter()
            .filter(|(_, s)| *s == Sealing::Clear && inner.codec.encrypted())
            .map(|(a, _)| a)
            .collect();
        inner.write("cannot write", |t| {
            for a in &clear {
                let value = inner.codec.encode(a, RecordGeneration::Included);
                t.insert(key(a.provider, &a.account).as_bytes(), value.as_slice())?;
            }
            Ok(())
        })?;
        if !clear.is_empty() {
            // The pages that held the records in the clear are free now, not erased: compacting
            // moves the live pages down and truncates the file, so the old pages go with it.
            inner
                .db
                .compact()
                .map_err(|e| fail(&format!("cannot compact after encrypting: {}", one_line(e))))?;
            tracing::info!(path = %shown, accounts = clear.len(),
                "encrypted the token store's records written with no key (store.encrypt_existing)");
        }
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
            let value = inner.codec.encode(&account, RecordGeneration::Included);
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
