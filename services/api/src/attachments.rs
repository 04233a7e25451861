//! Where attachment bytes live. The database holds what an attachment is
//! (owner, name, type, size, hash); an [`AttachmentStorage`] holds its bytes
//! under its id.
//!
//! An upload is streamed into a staging file with a hard size cap, hashed
//! and its head kept for type sniffing on the way, and only becomes an
//! object by an atomic rename once the handler accepted it. The staging
//! file is removed when the upload fails, is refused, or its request is
//! dropped mid-way (a client hanging up, the request timeout), so a failed
//! upload leaves nothing behind.

use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use axum::body::Body;
use filament_ids::AttachmentId;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio_stream::StreamExt as _;
use ulid::Ulid;

/// The storage of this api's attachments: local files under the configured
/// root. The one place that picks the implementation.
pub fn storage(state: &crate::state::AppState) -> LocalStorage {
    LocalStorage::new(&state.config().attachment_root)
}

/// Removes an attachment's file after its row is gone (or never came). A
/// failure leaves an orphan file, never a row without bytes, so it is
/// logged rather than failing the request.
pub async fn remove_file(storage: &dyn AttachmentStorage, attachment_id: AttachmentId) {
    if let Err(err) = storage.remove(attachment_id).await {
        tracing::error!(%attachment_id, %err, "cannot remove attachment file");
    }
}

/// The largest attachment (PROTOCOL.md §4.5).
pub const MAX_ATTACHMENT_BYTES: u64 = 25 * 1024 * 1024;
/// Bytes each user may hold in attachments.
pub const USER_QUOTA_BYTES: i64 = 250 * 1024 * 1024;
/// How much of an upload its type is sniffed from.
pub const SNIFF_BYTES: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("upload is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// The request body broke off (the client went away or sent garbage).
    #[error("upload body failed: {0}")]
    Body(axum::Error),
    #[error("staging the upload failed: {0}")]
    Io(#[from] io::Error),
}

/// An upload written out in full but not yet an object. Dropping it
/// removes its bytes.
#[derive(Debug)]
pub struct Staged {
    pub size_bytes: u64,
    pub sha256_hex: String,
    /// The first [`SNIFF_BYTES`] bytes, for sniffing the type.
    pub head: Vec<u8>,
    file: StagingFile,
}

/// Attachment bytes by attachment id.
#[async_trait]
pub trait AttachmentStorage: Send + Sync + 'static {
    /// Streams `body` into staging; more than `max_bytes` fails with
    /// `TooLarge` and keeps nothing.
    async fn stage(&self, body: Body, max_bytes: u64) -> Result<Staged, StageError>;

    /// Makes a staged upload the object `attachment_id`.
    async fn commit(&self, staged: Staged, attachment_id: AttachmentId) -> io::Result<()>;

    /// The object's bytes as a streaming body; `NotFound` if there is none.
    async fn open(&self, attachment_id: AttachmentId) -> io::Result<Body>;

    /// Removes the object; removing a missing object is not an error.
    async fn remove(&self, attachment_id: AttachmentId) -> io::Result<()>;
}

/// Objects as files `<root>/objects/<id>`, staged in `<root>/staging` on
/// the same filesystem so that a commit is one atomic rename.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    fn objects_dir(&self) -> PathBuf {
        self.root.join("objects")
    }

    fn object_path(&self, attachment_id: AttachmentId) -> PathBuf {
        // A canonical ULID is 26 Crockford characters: a safe file name.
        self.objects_dir().join(attachment_id.to_string())
    }
}

#[async_trait]
impl AttachmentStorage for LocalStorage {
    async fn stage(&self, body: Body, max_bytes: u64) -> Result<Staged, StageError> {
        let dir = self.staging_dir();
        tokio::fs::create_dir_all(&dir).await?;
        let file = StagingFile::new(dir.join(format!("upload-{}", Ulid::generate())));
        let mut out = tokio::fs::File::create(file.path()).await?;
        let mut hasher = Sha256::new();
        let mut head = Vec::new();
        let mut size_bytes: u64 = 0;
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(StageError::Body)?;
            size_bytes = size_bytes.saturating_add(chunk.len() as u64);
            if size_bytes > max_bytes {
                // `file` is dropped here, removing what was written.
                return Err(StageError::TooLarge { limit: max_bytes });
            }
            // Hashing a chunk (tens of KiB at most) is a few microseconds;
            // not worth a trip to the blocking pool.
            hasher.update(&chunk);
            if head.len() < SNIFF_BYTES {
                let take = (SNIFF_BYTES - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            out.write_all(&chunk).await?;
        }
        // Durable before it can be renamed into place: a crash must not
        // leave an object whose bytes never reached the disk.
        out.sync_all().await?;
        Ok(Staged {
            size_bytes,
            sha256_hex: hex(&hasher.finalize()),
            head,
            file,
        })
    }

    async fn commit(&self, mut staged: Staged, attachment_id: AttachmentId) -> io::Result<()> {
        tokio::fs::create_dir_all(self.objects_dir()).await?;
        tokio::fs::rename(staged.file.path(), self.object_path(attachment_id)).await?;
        staged.file.disarm();
        Ok(())
    }

    async fn open(&self, attachment_id: AttachmentId) -> io::Result<Body> {
        let file = tokio::fs::File::open(self.object_path(attachment_id)).await?;
        Ok(Body::from_stream(tokio_util::io::ReaderStream::new(file)))
    }

    async fn remove(&self, attachment_id: AttachmentId) -> io::Result<()> {
        match tokio::fs::remove_file(self.object_path(attachment_id)).await {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// A staging file that is removed on drop unless it was renamed away.
#[derive(Debug)]
struct StagingFile {
    path: PathBuf,
    armed: bool,
}

impl StagingFile {
    fn new(path: PathBuf) -> Self {
        Self { path, armed: true }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for StagingFile {
    fn drop(&mut self) {
        if self.armed {
            // Drop cannot await; one unlink is short enough to run inline.
            if let Err(err) = std::fs::remove_file(&self.path)
                && err.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %self.path.display(), %err, "cannot remove staged upload");
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root() -> PathBuf {
        std::env::temp_dir().join(format!("filament-storage-{}", Ulid::generate()))
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|read| read.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }

    fn chunked(parts: Vec<Vec<u8>>) -> Body {
        Body::from_stream(tokio_stream::iter(
            parts.into_iter().map(Ok::<_, io::Error>),
        ))
    }

    #[tokio::test]
    async fn stage_commit_open_remove() {
        let root = temp_root();
        let storage = LocalStorage::new(&root);
        let data: Vec<u8> = (0..20_000_u32).map(|i| (i % 251) as u8).collect();
        let staged = storage
            .stage(
                chunked(vec![data[..5].to_vec(), data[5..].to_vec()]),
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(staged.size_bytes, 20_000);
        assert_eq!(staged.head, data[..SNIFF_BYTES]);
        assert_eq!(staged.sha256_hex, hex(&Sha256::digest(&data)));
        let id = AttachmentId::generate();
        storage.commit(staged, id).await.unwrap();
        assert!(entries(&root.join("staging")).is_empty());

        let body = storage.open(id).await.unwrap();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        assert_eq!(bytes.as_ref(), data.as_slice());

        storage.remove(id).await.unwrap();
        storage.remove(id).await.unwrap();
        assert_eq!(
            storage.open(id).await.unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn oversized_or_dropped_uploads_leave_nothing() {
        let root = temp_root();
        let storage = LocalStorage::new(&root);
        let err = storage
            .stage(chunked(vec![vec![1; 600], vec![2; 600]]), 1000)
            .await
            .unwrap_err();
        assert!(matches!(err, StageError::TooLarge { limit: 1000 }), "{err}");
        assert!(entries(&root.join("staging")).is_empty());

        // Staged but never committed (the handler refused it).
        let staged = storage
            .stage(chunked(vec![vec![3; 10]]), 1000)
            .await
            .unwrap();
        assert_eq!(entries(&root.join("staging")).len(), 1);
        drop(staged);
        assert!(entries(&root.join("staging")).is_empty());
        assert!(entries(&root.join("objects")).is_empty());

        // A body that breaks off mid-way.
        let broken = Body::from_stream(tokio_stream::iter(vec![
            Ok(vec![4; 10]),
            Err(io::Error::other("client went away")),
        ]));
        let err = storage.stage(broken, 1000).await.unwrap_err();
        assert!(matches!(err, StageError::Body(_)), "{err}");
        assert!(entries(&root.join("staging")).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
