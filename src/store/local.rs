//! The local-folder store: objects are files under a root directory, written to a temporary
//! name, synced, then renamed into place, so a reader never sees half an object.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::StoreError;

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

fn io(context: &str, e: std::io::Error) -> StoreError {
    StoreError::Failed(format!("{context}: {e}"))
}

impl LocalStore {
    pub fn open(root: &str) -> Result<LocalStore, StoreError> {
        let root = PathBuf::from(root);
        std::fs::create_dir_all(&root).map_err(|e| io(&root.display().to_string(), e))?;
        Ok(LocalStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        if key.is_empty() || key.split('/').any(|part| part.is_empty() || part == "..") {
            return Err(StoreError::Failed(format!(
                "{key:?} is not a valid object key"
            )));
        }
        Ok(self.root.join(key))
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let mut upload = self.upload(key).await?;
        upload.write(body).await?;
        upload.complete().await
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Bytes::from(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(key.to_string()))
            }
            Err(e) => Err(io(&path.display().to_string(), e)),
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(tokio::fs::try_exists(self.path(key)?)
            .await
            .unwrap_or(false))
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            // Only the folder the prefix names is walked, not the whole store.
            let folder = prefix.rfind('/').map_or("", |end| &prefix[..end]);
            if folder.split('/').any(|part| part == "..") {
                return out;
            }
            let mut stack = vec![root.join(folder)];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if let Ok(rel) = path.strip_prefix(&root) {
                        let key = rel.to_string_lossy().replace('\\', "/");
                        if key.starts_with(&prefix) && !key.contains(".tmp-") {
                            out.push(key);
                        }
                    }
                }
            }
            out.sort();
            out
        })
        .await
        .map_err(|e| StoreError::Failed(e.to_string()))
    }

    pub async fn upload(&self, key: &str) -> Result<LocalUpload, StoreError> {
        let path = self.path(key)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| io(&dir.display().to_string(), e))?;
        }
        let tmp = path.with_file_name(format!(
            ".tmp-{}-{}",
            std::process::id(),
            path.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io(&tmp.display().to_string(), e))?;
        Ok(LocalUpload { file, tmp, path })
    }
}

#[derive(Debug)]
pub struct LocalUpload {
    file: tokio::fs::File,
    tmp: PathBuf,
    path: PathBuf,
}

impl LocalUpload {
    pub async fn write(&mut self, part: Bytes) -> Result<(), StoreError> {
        self.file
            .write_all(&part)
            .await
            .map_err(|e| io(&self.tmp.display().to_string(), e))
    }

    pub async fn complete(mut self) -> Result<(), StoreError> {
        let name = self.path.display().to_string();
        self.file.flush().await.map_err(|e| io(&name, e))?;
        self.file.sync_all().await.map_err(|e| io(&name, e))?;
        tokio::fs::rename(&self.tmp, &self.path)
            .await
            .map_err(|e| io(&name, e))
    }

    pub async fn abort(self) -> Result<(), StoreError> {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.tmp).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_and_uploads_appear_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().to_str().unwrap()).unwrap();
        store
            .put("outputs/e1/abc", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(
            store.get("outputs/e1/abc").await.unwrap(),
            Bytes::from_static(b"hello")
        );
        let mut up = store.upload("events/type=X/part-1.parquet").await.unwrap();
        up.write(Bytes::from_static(b"ab")).await.unwrap();
        assert!(!store.exists("events/type=X/part-1.parquet").await.unwrap());
        assert_eq!(store.list("events/").await.unwrap(), Vec::<String>::new());
        up.write(Bytes::from_static(b"cd")).await.unwrap();
        up.complete().await.unwrap();
        assert_eq!(
            store.get("events/type=X/part-1.parquet").await.unwrap(),
            Bytes::from_static(b"abcd")
        );
        assert_eq!(store.list("").await.unwrap().len(), 2);
        assert!(matches!(
            store.get("nope").await,
            Err(StoreError::NotFound(_))
        ));
        assert!(store.put("../escape", Bytes::new()).await.is_err());
    }
}
