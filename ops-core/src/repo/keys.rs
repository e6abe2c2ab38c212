//! The passwords of an encrypted repository: several key files (`keys/…`) wrap the
//! same master key, each under its own password, so that a colleague or a recovery
//! password kept in a vault opens the repository too, and a password can be changed
//! (add the new one, remove the old) without touching any data.

use bytes::Bytes;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::{Error, ErrorKind, Result, read_private_file};

use super::crypto::{KdfParams, KeyFile};
use super::format::KEYS_DIR;
use super::{Repository, random_hex, read_object};

/// One password of a repository, as `keys/…` records it (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The key file's id (the name under `keys/`).
    pub id: String,
    /// When it was added.
    pub created: chrono::DateTime<chrono::Utc>,
    /// The host that added it.
    pub host: String,
    /// Its Argon2id cost.
    pub kdf: KdfParams,
    /// True for the key that opened this repository.
    pub current: bool,
}

impl Repository {
    fn require_encrypted(&self) -> Result<&[u8; 64]> {
        self.keys.material().ok_or_else(|| {
            Error::invalid(format!(
                "the repository at {} is not encrypted: it has no passwords to manage",
                self.target().location()
            ))
        })
    }

    async fn key_files(&self) -> Result<Vec<(String, KeyFile)>> {
        let mut names: Vec<String> = self
            .target()
            .list(KEYS_DIR)
            .await?
            .map_ok(|m| m.key)
            .try_collect()
            .await?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let bytes = read_object(self.target().as_ref(), &name).await?;
            let file: KeyFile = serde_json::from_slice(&bytes)
                .map_err(|e| Error::corrupt(format!("key file {name} is malformed: {e}")))?;
            out.push((name, file));
        }
        Ok(out)
    }

    fn info(&self, name: &str, file: &KeyFile) -> KeyInfo {
        KeyInfo {
            id: name.trim_start_matches(KEYS_DIR).to_owned(),
            created: file.created,
            host: file.host.clone(),
            kdf: file.params,
            current: self.keys.key_file() == Some(name),
        }
    }

    /// Every password's key file, oldest name first.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for an unencrypted repository; storage errors.
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        self.require_encrypted()?;
        Ok(self
            .key_files()
            .await?
            .iter()
            .map(|(name, file)| self.info(name, file))
            .collect())
    }

    /// Adds a password: a new key file wrapping the same master key. The repository
    /// opens with either password afterwards.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for an unencrypted repository or an empty password;
    /// storage errors.
    pub async fn add_key(&self, password: &Secret, kdf: KdfParams) -> Result<KeyInfo> {
        let material = zeroize::Zeroizing::new(*self.require_encrypted()?);
        if password.is_empty() {
            return Err(Error::invalid("the new password is empty"));
        }
        let password = password.clone();
        let file = tokio::task::spawn_blocking(move || KeyFile::wrap(&material, &password, kdf))
            .await
            .map_err(|e| Error::internal(format!("key derivation task failed: {e}")))??;
        let body = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::internal(format!("serialize key: {e}")))?;
        let name = format!("{KEYS_DIR}{}", random_hex(16));
        self.target().put(&name, Bytes::from(body)).await?;
        Ok(self.info(&name, &file))
    }

    /// Removes a password by its key id (or a unique prefix). The last password and
    /// the one that opened this repository are refused: the first would lose every
    /// backup, the second is usually a mistake (open with another password to remove
    /// it).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] / [`ErrorKind::InvalidInput`] for no or several matches,
    /// the last key or the current one; storage errors.
    pub async fn remove_key(&self, id: &str) -> Result<KeyInfo> {
        self.require_encrypted()?;
        let files = self.key_files().await?;
        let matching: Vec<&(String, KeyFile)> = files
            .iter()
            .filter(|(name, _)| !id.is_empty() && name.trim_start_matches(KEYS_DIR).starts_with(id))
            .collect();
        let (name, file) = match matching.as_slice() {
            [one] => *one,
            [] => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "there is no key '{id}' in the repository at {}",
                        self.target().location()
                    ),
                ));
            }
            many => {
                return Err(Error::invalid(format!(
                    "'{id}' is ambiguous: it matches {} keys; give more of the id",
                    many.len()
                )));
            }
        };
        if files.len() == 1 {
            return Err(Error::invalid(
                "refusing to remove the repository's last password: without a password nobody can read any backup",
            ));
        }
        if self.keys.key_file() == Some(name.as_str()) {
            return Err(Error::invalid(format!(
                "refusing to remove key {}: it is the password this repository was opened with; open it with another password to remove this one, or change it instead",
                name.trim_start_matches(KEYS_DIR)
            )));
        }
        let info = self.info(name, file);
        self.target().delete(name).await?;
        Ok(info)
    }

    /// Changes the password this repository was opened with: adds the new one, then
    /// removes the old key file. Returns the new key.
    ///
    /// # Errors
    /// As [`Repository::add_key`]; storage errors removing the old key (the new one
    /// then works and the old one still does: remove it again).
    pub async fn change_password(&self, new: &Secret, kdf: KdfParams) -> Result<KeyInfo> {
        let old = self
            .keys
            .key_file()
            .ok_or_else(|| Error::invalid("this repository was not opened with a password"))?
            .to_owned();
        let added = self.add_key(new, kdf).await?;
        self.target().delete(&old).await.map_err(|e| {
            e.during(format!(
                "removing the old key {} (the new password works already)",
                old.trim_start_matches(KEYS_DIR)
            ))
        })?;
        Ok(added)
    }

    /// Writes this repository's unwrapped master key to `path` (created owner-only,
    /// never over an existing file), so that a program started once per WAL segment
    /// opens the repository with [`Repository::open_with_local_key`] instead of paying
    /// the memory-hard password derivation each time. Whoever reads that file reads
    /// every backup: keep it on the database host only, readable by its service
    /// account only.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for an unencrypted repository;
    /// [`ErrorKind::AlreadyExists`] when the file exists; I/O errors.
    pub fn write_local_key(&self, path: &std::path::Path) -> Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let material = self.require_encrypted()?;
        let file = LocalKey {
            format: LOCAL_KEY_FORMAT.to_owned(),
            repository: self.config().id.clone(),
            key: hex::encode(material),
            check: local_key_check(material, &self.config().id),
        };
        let body = zeroize::Zeroizing::new(
            serde_json::to_vec_pretty(&file)
                .map_err(|e| Error::internal(format!("serialize local key: {e}")))?,
        );
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(format!("creating the key file {}", path.display()), e))?;
        f.write_all(&body)
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io(format!("writing the key file {}", path.display()), e))?;
        Ok(())
    }

    /// Opens the repository on `target` with a key file written by
    /// [`Repository::write_local_key`]. The file must be readable by its owner only
    /// (as libpq asks of a password file), belong to this repository, and hold an
    /// intact key: all three are checked before any data moves.
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] for a file others can read;
    /// [`ErrorKind::WrongPassword`] for another repository's key or a damaged one;
    /// as [`Repository::open`] otherwise.
    pub async fn open_with_local_key(
        target: std::sync::Arc<dyn crate::BackupTarget>,
        path: &std::path::Path,
    ) -> Result<Self> {
        let bytes = read_private_file(path, "key file")?;
        // serde's message may quote the content: a secret. Only the position is told.
        let file: LocalKey = serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(
                ErrorKind::WrongPassword,
                format!(
                    "{} is not a dbops key file (unreadable at line {}, column {}): write one with the repository password",
                    path.display(),
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let mut material = zeroize::Zeroizing::new([0u8; 64]);
        if file.format != LOCAL_KEY_FORMAT
            || hex::decode_to_slice(file.key.as_bytes(), &mut material[..]).is_err()
            || local_key_check(&material, &file.repository) != file.check
        {
            return Err(Error::new(
                ErrorKind::WrongPassword,
                format!(
                    "the key file {} is damaged: write it again from the repository password",
                    path.display()
                ),
            ));
        }
        let repo = Self::open_with_material(target, &material).await?;
        if repo.config().id != file.repository {
            return Err(Error::new(
                ErrorKind::WrongPassword,
                format!(
                    "the key file {} belongs to repository {}, not to the one at {} ({})",
                    path.display(),
                    file.repository,
                    repo.target().location(),
                    repo.config().id
                ),
            ));
        }
        Ok(repo)
    }
}

const LOCAL_KEY_FORMAT: &str = "dbops-local-key-v1";

/// A repository's unwrapped master key, as kept on a host by
/// [`Repository::write_local_key`].
#[derive(Serialize, Deserialize)]
struct LocalKey {
    format: String,
    repository: String,
    key: String,
    check: String,
}

impl Drop for LocalKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// A check value over the whole key and its repository id, so that a damaged file
/// is refused instead of sealing data under a wrong key.
fn local_key_check(material: &[u8; 64], repository: &str) -> String {
    // Both halves (the cipher key and the id key): a damage to either is caught.
    let mut hasher = blake3::Hasher::new_derive_key("dbops local key check v1");
    hasher.update(material);
    hasher.update(repository.as_bytes());
    hex::encode(&hasher.finalize().as_bytes()[..16])
}

