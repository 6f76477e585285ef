//! Every object carries a CRC32, verified on a whole read: damage at rest is an error naming the object,
//! on both backends.

mod common;

use bytes::Bytes;
use keel_s3::dir::DirStore;
use keel_s3::{ObjectStore, PutBody, PutCondition, StoreError};

fn flip_last_byte(path: &std::path::Path) {
    let mut b = std::fs::read(path).unwrap();
    let n = b.len() - 1;
    b[n] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

#[tokio::test]
async fn a_damaged_object_fails_its_checksum_in_a_directory() {
    let root = tempfile::tempdir().unwrap();
    let store = DirStore::open(root.path()).unwrap();
    store.put("a/b", PutBody::Bytes(Bytes::from(vec![7u8; 5000])), PutCondition::None).await.unwrap();
    flip_last_byte(&root.path().join("a/b"));
    let e = store.get("a/b").await.unwrap().bytes().await.unwrap_err();
    assert!(matches!(&e, StoreError::ChecksumMismatch { key, .. } if key == "a/b"), "{e}");
    // A damaged header is named as such.
    let mut b = std::fs::read(root.path().join("a/b")).unwrap();
    b[3] ^= 1;
    std::fs::write(root.path().join("a/b"), b).unwrap();
    let e = store.head("a/b").await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }) && e.to_string().contains("a/b"), "{e}");
}

#[tokio::test]
async fn a_damaged_object_fails_its_checksum_in_s3() {
    let server = common::start_in_process();
    let scratch = tempfile::tempdir().unwrap();
    let keys = common::key_files(scratch.path());
    let store = common::bucket_store(&format!("http://{}", server.addr), Some(keys), |_| {}).await;
    // Bytes that disagree with the checksum they carry (as if changed at rest behind the server's back).
    let bucket = store.client().list_buckets().send().await.unwrap().buckets()[0].name().unwrap().to_owned();
    store
        .client()
        .put_object()
        .bucket(&bucket)
        .key("x/y")
        .body(aws_sdk_s3::primitives::ByteStream::from(vec![9u8; 5000]))
        .metadata("keel-crc32", "00000000")
        .send()
        .await
        .unwrap();
    let e = store.get("x/y").await.unwrap().bytes().await.unwrap_err();
    assert!(matches!(&e, StoreError::ChecksumMismatch { key, .. } if key == "x/y"), "{e}");
    // A ranged read cannot check the whole-object checksum, and does not claim to.
    let part = store.get_range("x/y", 0..10).await.unwrap().bytes().await.unwrap();
    assert_eq!(&part[..], &[9u8; 10]);
}
