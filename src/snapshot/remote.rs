//! Snapshots in object storage (`s3://bucket/prefix`, `file:///path`, through the `object_store`
//! crate), so a new pod on a new node starts warm too. One writer publishes the files its local
//! directory holds; every reader downloads the newest one into its own directory and loads it
//! from there with the same checks as any local snapshot. Credentials come from the usual
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_REGION`, `AWS_ENDPOINT_URL`, ...), never from flags.
//!
//! Object names are the local file names (creation time first), so the newest sorts last; an
//! upload becomes visible only once complete (a multipart upload is committed at its end), and a
//! download is written under a temporary name and renamed, so nobody loads half a snapshot.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, WriteMultipart};
use tokio::io::AsyncWriteExt;

use super::format::SnapshotError;
use super::local::LocalSnapshots;

const EXTENSION: &str = ".cdcsnap";

#[derive(Debug, Clone)]
pub struct RemoteSnapshots {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    keep: usize,
}

impl RemoteSnapshots {
    /// The store a URL names, configured from `env` (the process environment, passed in):
    /// `AWS_*`, `GOOGLE_*` and `AZURE_*` variables become the store's options.
    pub fn from_url(
        url: &str,
        keep: usize,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let options = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v));
        let (store, prefix) = object_store::parse_url_opts(&parsed, options).map_err(|e| e.to_string())?;
        Ok(Self {
            store: Arc::from(store),
            prefix,
            url: url.to_string(),
            keep: keep.max(1),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn table_prefix(&self, table: &str) -> Path {
        self.prefix.child(table)
    }

    /// The table's snapshot object names, oldest first.
    async fn names(&self, table: &str) -> Result<Vec<String>, SnapshotError> {
        let mut listing = self.store.list(Some(&self.table_prefix(table)));
        let mut names = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(remote_error)?;
            if let Some(name) = meta.location.filename() {
                if name.ends_with(EXTENSION) && !name.starts_with('.') {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Downloads the table's newest snapshot into the local directory (unless it is there
    /// already) and returns its local path; None when the store has none.
    pub fn download_newest(
        &self,
        table: &str,
        local: &LocalSnapshots,
    ) -> Result<Option<PathBuf>, SnapshotError> {
        block_on(async {
            let Some(name) = self.names(table).await?.pop() else {
                return Ok(None);
            };
            let dir = local.dir().join(table);
            tokio::fs::create_dir_all(&dir).await?;
            let target = dir.join(&name);
            if tokio::fs::try_exists(&target).await.unwrap_or(false) {
                return Ok(Some(target));
            }
            let temporary = dir.join(format!(".{name}.download"));
            let result = async {
                let mut file = tokio::fs::File::create(&temporary).await?;
                let object = self
                    .store
                    .get(&self.table_prefix(table).child(name.as_str()))
                    .await
                    .map_err(remote_error)?;
                let mut stream = object.into_stream();
                while let Some(chunk) = stream.next().await {
                    file.write_all(&chunk.map_err(remote_error)?).await?;
                }
                file.sync_all().await?;
                Ok::<_, SnapshotError>(())
            }
            .await;
            if let Err(e) = result {
                let _ = tokio::fs::remove_file(&temporary).await;
                return Err(e);
            }
            tokio::fs::rename(&temporary, &target).await?;
            Ok(Some(target))
        })
    }

    /// Uploads a local snapshot file and prunes the table's older objects beyond `keep`.
    pub fn publish(&self, table: &str, file: &FsPath) -> Result<(), SnapshotError> {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| SnapshotError::Damaged(format!("{}: no file name", file.display())))?
            .to_string();
        block_on(async {
            let location = self.table_prefix(table).child(name.as_str());
            let upload = self.store.put_multipart(&location).await.map_err(remote_error)?;
            let mut writer = WriteMultipart::new(upload);
            let mut input = tokio::fs::File::open(file).await?;
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let n = tokio::io::AsyncReadExt::read(&mut input, &mut buffer).await?;
                if n == 0 {
                    break;
                }
                writer.write(&buffer[..n]);
            }
            writer.finish().await.map_err(remote_error)?;
            let names = self.names(table).await?;
            let stale = names.len().saturating_sub(self.keep);
            for old in &names[..stale] {
                let _ = self
                    .store
                    .delete(&self.table_prefix(table).child(old.as_str()))
                    .await;
            }
            Ok(())
        })
    }
}

fn remote_error(error: object_store::Error) -> SnapshotError {
    SnapshotError::Io(std::io::Error::other(error.to_string()))
}

/// Runs an object-store call from a plain thread (ingest, the snapshot writer).
fn block_on<T>(
    future: impl std::future::Future<Output = Result<T, SnapshotError>>,
) -> Result<T, SnapshotError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_then_download_through_a_file_url() {
        let remote_dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/snapshots", remote_dir.path().display());
        std::fs::create_dir_all(remote_dir.path().join("snapshots")).unwrap();
        let remote = RemoteSnapshots::from_url(&url, 1, Vec::new()).unwrap();
        let source = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(source.path().join("orders")).unwrap();
        let older = source.path().join("orders/0001700000000000-1-00000001.cdcsnap");
        let newer = source.path().join("orders/0001700000001000-1-00000002.cdcsnap");
        std::fs::write(&older, b"old").unwrap();
        std::fs::write(&newer, b"new").unwrap();
        remote.publish("orders", &older).unwrap();
        remote.publish("orders", &newer).unwrap();

        let reader_dir = tempfile::tempdir().unwrap();
        let local = LocalSnapshots::new(reader_dir.path(), 2);
        let got = remote.download_newest("orders", &local).unwrap().unwrap();
        assert_eq!(got.file_name(), newer.file_name());
        assert_eq!(std::fs::read(&got).unwrap(), b"new");
        assert_eq!(remote.download_newest("missing", &local).unwrap(), None);
        // keep = 1: the older object was pruned.
        let left = std::fs::read_dir(remote_dir.path().join("snapshots/orders"))
            .unwrap()
            .count();
        assert_eq!(left, 1);
    }

    #[test]
    fn a_bad_url_is_named() {
        assert!(RemoteSnapshots::from_url("not a url", 2, Vec::new()).is_err());
        assert!(RemoteSnapshots::from_url("ftp://host/x", 2, Vec::new()).is_err());
    }
}
