//! Keys, chunk ids and authenticated encryption.
//!
//! A repository has one master key: 32 bytes for XChaCha20-Poly1305 and 32 bytes for
//! the keyed BLAKE3 hash that names chunks (so an id reveals nothing about content to
//! someone without the key). A password unwraps the master key from a key file through
//! Argon2id. Unencrypted repositories keep the id key in their config and seal nothing.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::{Error, ErrorKind, Result};

use super::format::ChunkId;

/// Nonce length of XChaCha20-Poly1305.
pub(crate) const NONCE_LEN: usize = 24;
/// Tag length of Poly1305.
pub(crate) const TAG_LEN: usize = 16;

/// The master key material. Never printed.
#[derive(Clone)]
pub(crate) struct Keys {
    cipher: Option<XChaCha20Poly1305>,
    id_key: [u8; 32],
    /// The master key, kept (zeroized on drop) so that another password can wrap it.
    material: Option<std::sync::Arc<zeroize::Zeroizing<[u8; 64]>>>,
    /// The key file that opened the repository (`keys/…`), if any.
    key_file: Option<String>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(******)")
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        // The cipher zeroizes its own key and the material is `Zeroizing`; the id key
        // (half of the master key) is a plain array.
        zeroize::Zeroize::zeroize(&mut self.id_key);
    }
}

impl Keys {
    /// Fresh random keys; `encrypted` false gives an id key only.
    pub(crate) fn generate(encrypted: bool) -> (Self, zeroize::Zeroizing<[u8; 64]>) {
        let mut material = zeroize::Zeroizing::new([0u8; 64]);
        OsRng.fill_bytes(&mut material[..]);
        (Self::from_material(&material, encrypted), material)
    }

    pub(crate) fn from_material(material: &[u8; 64], encrypted: bool) -> Self {
        let mut id_key = [0u8; 32];
        id_key.copy_from_slice(&material[32..]);
        let cipher = encrypted.then(|| XChaCha20Poly1305::new(material[..32].into()));
        Self {
            cipher,
            id_key,
            material: encrypted.then(|| std::sync::Arc::new(zeroize::Zeroizing::new(*material))),
            key_file: None,
        }
    }

    /// Records which key file opened the repository.
    pub(crate) fn with_key_file(mut self, key: impl Into<String>) -> Self {
        self.key_file = Some(key.into());
        self
    }

    /// The key file that opened the repository.
    pub(crate) fn key_file(&self) -> Option<&str> {
        self.key_file.as_deref()
    }

    /// The master key (encrypted repositories only).
    pub(crate) fn material(&self) -> Option<&[u8; 64]> {
        self.material.as_deref().map(|m| &**m)
    }

    /// Unencrypted keys from a stored id key.
    pub(crate) fn plain(id_key: [u8; 32]) -> Self {
        Self {
            cipher: None,
            id_key,
            material: None,
            key_file: None,
        }
    }

    pub(crate) fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    /// The keyed hash that names a chunk.
    pub(crate) fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, data).as_bytes())
    }

    /// A keyed hasher for stream digests.
    pub(crate) fn digest_hasher(&self) -> blake3::Hasher {
        let mut h = blake3::Hasher::new_keyed(&self.id_key);
        h.update(b"dbops stream digest v1\0");
        h
    }

    /// Encrypts and authenticates `plain` bound to `aad`: nonce ‖ ciphertext ‖ tag.
    /// Identity for unencrypted repositories.
    pub(crate) fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let Some(cipher) = &self.cipher else {
            return Ok(plain.to_vec());
        };
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = cipher
            .encrypt(&nonce, Payload { msg: plain, aad })
            .map_err(|_| Error::internal("encryption failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Authenticates and decrypts what [`Keys::seal`] produced.
    ///
    /// # Errors
    /// [`ErrorKind::Corrupt`] when authentication fails.
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let Some(cipher) = &self.cipher else {
            return Ok(sealed.to_vec());
        };
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(Error::corrupt("encrypted object is too short"));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| Error::corrupt("authentication failed: the data was modified or damaged"))
    }
}

/// Argon2id parameters stored in a key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        // 64 MiB, 3 passes: ~0.2 s on one core, as restic and the OWASP guidance suggest.
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// A stored key: the master key wrapped under a password.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeyFile {
    pub kdf: String,
    pub params: KdfParams,
    /// Base64 salt.
    pub salt: String,
    /// Base64 of nonce ‖ ciphertext ‖ tag of the 64-byte master key.
    pub wrapped: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub host: String,
}

const KEY_AAD: &[u8] = b"dbops key v1";

fn kek(password: &Secret, salt: &[u8], params: KdfParams) -> Result<XChaCha20Poly1305> {
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            Some(32),
        )
        .map_err(|e| {
            Error::new(
                ErrorKind::UnsupportedFormat,
                format!("bad KDF parameters: {e}"),
            )
        })?,
    );
    // The key-encryption key opens the master key: zeroized once the cipher holds it.
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(password.expose().as_bytes(), salt, &mut out[..])
        .map_err(|e| Error::internal(format!("key derivation failed: {e}")))?;
    Ok(XChaCha20Poly1305::new((&*out).into()))
}

impl KeyFile {
    pub(crate) fn wrap(material: &[u8; 64], password: &Secret, params: KdfParams) -> Result<Self> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut salt = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        let cipher = kek(password, &salt, params)?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: material,
                    aad: KEY_AAD,
                },
            )
            .map_err(|_| Error::internal("key wrapping failed"))?;
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&ct);
        Ok(Self {
            kdf: "argon2id".into(),
            params,
            salt: b64.encode(salt),
            wrapped: b64.encode(wrapped),
            created: chrono::Utc::now(),
            host: super::host_name(),
        })
    }

    /// The master key material, or `None` when the password does not fit this key.
    pub(crate) fn unwrap_with(
        &self,
        password: &Secret,
    ) -> Result<Option<zeroize::Zeroizing<[u8; 64]>>> {
        if self.kdf != "argon2id" {
            return Err(Error::new(
                ErrorKind::UnsupportedFormat,
                format!(
                    "key uses KDF '{}', which this dbops does not know",
                    self.kdf
                ),
            ));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let bad = |what: &str| Error::corrupt(format!("key file has a malformed {what}"));
        let salt = b64.decode(&self.salt).map_err(|_| bad("salt"))?;
        let wrapped = b64.decode(&self.wrapped).map_err(|_| bad("wrapped key"))?;
        if wrapped.len() < NONCE_LEN + TAG_LEN {
            return Err(bad("wrapped key"));
        }
        let cipher = kek(password, &salt, self.params)?;
        let (nonce, ct) = wrapped.split_at(NONCE_LEN);
        match cipher.decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: KEY_AAD,
            },
        ) {
            Ok(plain) if plain.len() == 64 => {
                let plain = zeroize::Zeroizing::new(plain);
                let mut m = zeroize::Zeroizing::new([0u8; 64]);
                m.copy_from_slice(&plain);
                Ok(Some(m))
            }
            Ok(plain) => {
                drop(zeroize::Zeroizing::new(plain));
                Err(bad("master key length"))
            }
            Err(_) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let (keys, _) = Keys::generate(true);
        let sealed = keys.seal(b"aad", b"hello").expect("seal");
        assert_eq!(keys.open(b"aad", &sealed).expect("open"), b"hello");
        assert!(keys.open(b"other", &sealed).is_err());
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert_eq!(
            keys.open(b"aad", &bad).expect_err("must fail").kind(),
            ErrorKind::Corrupt
        );
    }

    #[test]
    fn key_file_unwraps_only_with_its_password() {
        let params = KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        let (_, material) = Keys::generate(true);
        let kf = KeyFile::wrap(&material, &Secret::new("right"), params).expect("wrap");
        assert_eq!(
            kf.unwrap_with(&Secret::new("right")).expect("ok"),
            Some(material)
        );
        assert_eq!(kf.unwrap_with(&Secret::new("wrong")).expect("ok"), None);
    }

    #[test]
    fn chunk_ids_are_keyed() {
        let (a, _) = Keys::generate(true);
        let (b, _) = Keys::generate(true);
        assert_ne!(a.chunk_id(b"x"), b.chunk_id(b"x"));
        assert_eq!(a.chunk_id(b"x"), a.chunk_id(b"x"));
    }
}
