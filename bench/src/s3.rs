//! Object transfer throughput: keel-s3 against the same transfer by `aws s3 cp` (the AWS CLI) on the same
//! S3 server in the same run, and the directory backend beside them. The server is `s3s-fs` in this process,
//! on loopback, so the figures compare clients, not networks.

use std::io;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use keel_s3::dir::DirStore;
use keel_s3::s3::{S3Config, S3Store};
use keel_s3::{ObjectStore, PutBody, PutCondition};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct TransferRow {
    pub size_mib: u64,
    pub keel_s3_put_mb_s: f64,
    pub keel_s3_get_mb_s: f64,
    pub aws_cli_put_mb_s: f64,
    pub aws_cli_get_mb_s: f64,
    pub dir_put_mb_s: f64,
    pub dir_get_mb_s: f64,
    pub put_vs_aws_cli: f64,
    pub get_vs_aws_cli: f64,
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// Streams an object into a file, as `aws s3 cp` does on download.
async fn get_to_file(store: &impl ObjectStore, key: &str, to: &Path) -> io::Result<()> {
    use std::io::Write;
    let mut g = store.get(key).await.map_err(io::Error::other)?;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(to)?);
    while let Some(c) = g.next_chunk().await.map_err(io::Error::other)? {
        f.write_all(&c)?;
    }
    f.flush()
}

fn aws(args: &[&str], endpoint: &str, config: &Path) -> io::Result<()> {
    let out = Command::new("aws")
        .args(args)
        .args(["--endpoint-url", endpoint, "--only-show-errors"])
        .env("AWS_ACCESS_KEY_ID", keel_s3::test_server::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", keel_s3::test_server::SECRET_KEY)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", config)
        .output()
        .map_err(|e| io::Error::other(format!("running `aws` (pip install awscli): {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!("aws {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr))));
    }
    Ok(())
}

/// Runs every size `runs` times (interleaved) and keeps each figure's best.
pub fn run(dir: &Path, sizes_mib: &[u64], runs: u32) -> io::Result<Vec<TransferRow>> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let server_root = dir.join("server");
    std::fs::create_dir_all(&server_root)?;
    let addr = keel_s3::test_server::start(&server_root)?;
    let endpoint = format!("http://{addr}");
    let config = dir.join("aws-config");
    std::fs::write(&config, "[default]\ns3 =\n    addressing_style = path\n")?;
    let keys = (dir.join("ak"), dir.join("sk"));
    std::fs::write(&keys.0, keel_s3::test_server::ACCESS_KEY)?;
    std::fs::write(&keys.1, keel_s3::test_server::SECRET_KEY)?;
    let store = rt.block_on(async {
        let mut cfg = S3Config::new("bench");
        cfg.endpoint = Some(endpoint.clone());
        cfg.access_key_file = Some(keys.0.clone());
        cfg.secret_key_file = Some(keys.1.clone());
        let s = S3Store::connect(cfg).await.map_err(io::Error::other)?;
        s.client().create_bucket().bucket("bench").send().await.map_err(io::Error::other)?;
        Ok::<_, io::Error>(s)
    })?;
    let dir_store = DirStore::open(dir.join("dirstore")).map_err(io::Error::other)?;
    let mut rows = Vec::new();
    for &mib in sizes_mib {
        let bytes = mib << 20;
        let src = dir.join(format!("src-{mib}"));
        let data: Vec<u8> = (0..bytes).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(&src, &data)?;
        drop(data);
        let dst = dir.join(format!("dst-{mib}"));
        let mut best = [f64::MAX; 6];
        for r in 0..runs.max(1) {
            let key = format!("obj-{mib}-{r}");
            let t = Instant::now();
            rt.block_on(store.put(&key, PutBody::File(src.clone()), PutCondition::None)).map_err(io::Error::other)?;
            best[0] = best[0].min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            rt.block_on(get_to_file(&store, &key, &dst))?;
            best[1] = best[1].min(t.elapsed().as_secs_f64());

            let url = format!("s3://bench/aws-{mib}-{r}");
            let t = Instant::now();
            aws(&["s3", "cp", src.to_str().unwrap_or_default(), &url], &endpoint, &config)?;
            best[2] = best[2].min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            aws(&["s3", "cp", &url, dst.to_str().unwrap_or_default()], &endpoint, &config)?;
            best[3] = best[3].min(t.elapsed().as_secs_f64());

            let t = Instant::now();
            rt.block_on(dir_store.put(&key, PutBody::File(src.clone()), PutCondition::None))
                .map_err(io::Error::other)?;
            best[4] = best[4].min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            rt.block_on(get_to_file(&dir_store, &key, &dst))?;
            best[5] = best[5].min(t.elapsed().as_secs_f64());
        }
        let row = TransferRow {
            size_mib: mib,
            keel_s3_put_mb_s: mb_s(bytes, best[0]),
            keel_s3_get_mb_s: mb_s(bytes, best[1]),
            aws_cli_put_mb_s: mb_s(bytes, best[2]),
            aws_cli_get_mb_s: mb_s(bytes, best[3]),
            dir_put_mb_s: mb_s(bytes, best[4]),
            dir_get_mb_s: mb_s(bytes, best[5]),
            put_vs_aws_cli: best[2] / best[0],
            get_vs_aws_cli: best[3] / best[1],
        };
        rows.push(row);
        let _ = std::fs::remove_file(&src);
        let _ = std::fs::remove_file(&dst);
    }
    Ok(rows)
}
