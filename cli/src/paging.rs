//! `keel paging …`: offline tools for a paging store. A broker's data directory holds the journal in
//! `DIR/journal` and the pages in `DIR/pages`; these tools read both without changing either.

use std::path::PathBuf;

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Args, Subcommand};
use keel_paging::inspect::{inspect, AddressReport, Inspection};
use keel_paging::{RemotePages, Standing};

use crate::journal::{Failed, KeyArgs};
use crate::Outcome;

#[derive(Subcommand)]
pub enum PagingCommand {
    /// Per address: pages, messages, bytes, and each subscription's exact pending counts.
    Stats {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        json: bool,
    },
    /// Every paged message, one a line: address, page, sequence number, transaction, standing, length.
    Print {
        #[command(flatten)]
        dir: DataDir,
        /// Only this address.
        #[arg(long)]
        address: Option<String>,
        /// JSON lines, with the payload in base64.
        #[arg(long)]
        json: bool,
    },
    /// Check every page of every address (frame checksums, sequence, tags); exit 1 on any damage.
    Verify {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
pub struct DataDir {
    /// The broker's data directory: the journal in DIR/journal, the pages in DIR/pages.
    #[arg(long)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Where uploaded pages are, when the broker uploads them: a directory (`/mnt/pages`) or
    /// `s3://BUCKET` (endpoint, region and credentials from the AWS environment).
    #[arg(long)]
    pub objects: Option<String>,
    /// The key prefix of uploaded pages.
    #[arg(long, default_value = "")]
    pub objects_prefix: String,
}

impl DataDir {
    fn remote(&self) -> anyhow::Result<Option<RemotePages>> {
        let Some(o) = &self.objects else { return Ok(None) };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let store = rt.block_on(keel_s3::AnyStore::open(o))?;
        Ok(Some(RemotePages { store, prefix: self.objects_prefix.clone() }))
    }

    fn paths(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (journal, pages) = (self.dir.join("journal"), self.dir.join("pages"));
        for p in [&journal, &pages] {
            let meta =
                std::fs::metadata(p).with_context(|| format!("--dir {}: no {}", self.dir.display(), p.display()))?;
            if !meta.is_dir() {
                bail!("{}: not a directory", p.display());
            }
        }
        Ok((journal, pages))
    }
}

pub fn run(command: PagingCommand) -> anyhow::Result<Outcome> {
    match command {
        PagingCommand::Stats { dir, json } => {
            let (journal, pages) = dir.paths()?;
            let i = inspect(&pages, &journal, dir.keys.load()?.as_ref(), dir.remote()?, &mut |_, _, _, _| {})?;
            report(&i, json, false)
        }
        PagingCommand::Verify { dir, json } => {
            let (journal, pages) = dir.paths()?;
            let i = inspect(&pages, &journal, dir.keys.load()?.as_ref(), dir.remote()?, &mut |_, _, _, _| {})?;
            report(&i, json, true)
        }
        PagingCommand::Print { dir, address, json } => print(&dir, address.as_deref(), json),
    }
}

fn standing(s: Standing) -> &'static str {
    match s {
        Standing::Visible => "visible",
        Standing::RolledBack => "rolled-back",
        Standing::Undecided => "undecided",
    }
}

fn print(dir: &DataDir, only: Option<&str>, json: bool) -> anyhow::Result<Outcome> {
    use std::io::Write;
    let (journal, pages) = dir.paths()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut write_err = None;
    let i = inspect(&pages, &journal, dir.keys.load()?.as_ref(), dir.remote()?, &mut |addr, page, m, s| {
        if only.is_some_and(|o| o != addr) || write_err.is_some() {
            return;
        }
        let r = if json {
            let line = serde_json::json!({
                "address": addr, "page": page, "seq": m.seq, "tx": m.tx, "standing": standing(s),
                "len": m.payload.len(),
                "payload": base64::engine::general_purpose::STANDARD.encode(&m.payload),
            });
            writeln!(out, "{line}")
        } else {
            writeln!(out, "{addr}\tpage {page}\tseq {}\ttx {}\t{}\t{} bytes", m.seq, m.tx, standing(s), m.payload.len())
        };
        if let Err(e) = r {
            write_err = Some(e);
        }
    })?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    out.flush()?;
    let bad: Vec<&AddressReport> = i.addresses.iter().filter(|a| a.scan.is_err()).collect();
    for a in &bad {
        eprintln!("keel: {}", a.scan.as_ref().unwrap_err());
    }
    if let Some(o) = only {
        if !i.addresses.iter().any(|a| a.name == o) {
            bail!("no address {o:?} in {}", dir.dir.display());
        }
    }
    if bad.is_empty() {
        Ok(Outcome::Ok)
    } else {
        Err(Failed.into())
    }
}

fn report(i: &Inspection, json: bool, verify: bool) -> anyhow::Result<Outcome> {
    let mut failed = false;
    let mut addresses = Vec::new();
    for a in &i.addresses {
        let v = match &a.scan {
            Err(e) => {
                failed = true;
                serde_json::json!({ "address": a.name, "index": a.index, "dir": a.dir, "error": e.to_string() })
            }
            Ok(s) => serde_json::json!({
                "address": a.name,
                "index": a.index,
                "dir": a.dir,
                "next_seq": s.next_seq,
                "pages": s.pages.len(),
                "page_bytes": s.pages.iter().map(|p| p.file_bytes).sum::<u64>(),
                "messages": s.pages.first().map_or(0, |p| s.next_seq - p.first_seq),
                "payload_bytes": s.pages.iter().map(|p| p.payload_bytes).sum::<u64>(),
                "encrypted_pages": s.pages.iter().filter(|p| p.key_id.is_some()).count(),
                "pages_to_delete_on_open": s.garbage_pages,
                "torn_tail": s.torn_tail.as_ref().map(|t| serde_json::json!({"page": t.page, "offset": t.offset, "bytes": t.bytes})),
                "committed_transactions": s.committed_transactions,
                "undecided_transactions": s.undecided_transactions,
                "rolled_back_messages": s.rolled_back_messages,
                "subscriptions": s.subscriptions.iter().map(|c| serde_json::json!({
                    "name": c.name, "start": c.start, "floor": c.floor, "ack_ranges": c.ack_ranges,
                    "pending_messages": c.pending.messages, "pending_bytes": c.pending.bytes,
                })).collect::<Vec<_>>(),
                "per_page": s.pages.iter().map(|p| serde_json::json!({
                    "id": p.id, "file": p.path.file_name().map(|n| n.to_string_lossy().into_owned()),
                    "first_seq": p.first_seq, "end_seq": p.end_seq, "payload_bytes": p.payload_bytes,
                    "file_bytes": p.file_bytes, "key_id": p.key_id, "local": p.local,
                })).collect::<Vec<_>>(),
            }),
        };
        addresses.push(v);
    }
    if json {
        let v = serde_json::json!({ "ok": !failed, "addresses": addresses, "orphan_dirs": i.orphan_dirs });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (a, v) in i.addresses.iter().zip(&addresses) {
            match &a.scan {
                Err(e) => println!("{}: ERROR {e}", a.name),
                Ok(s) => {
                    println!(
                        "{}: {} pages, {} bytes, messages {}..{}{}",
                        a.name,
                        s.pages.len(),
                        v["page_bytes"],
                        s.pages.first().map_or(s.next_seq, |p| p.first_seq),
                        s.next_seq,
                        s.torn_tail.as_ref().map_or(String::new(), |t| format!(
                            " (torn tail: {} bytes at byte {} of page {})",
                            t.bytes, t.offset, t.page
                        )),
                    );
                    for c in &s.subscriptions {
                        println!(
                            "  {}: floor {}, pending {} messages, {} bytes",
                            c.name, c.floor, c.pending.messages, c.pending.bytes
                        );
                    }
                }
            }
        }
        for d in &i.orphan_dirs {
            println!("orphan directory (no address record): {}", d.display());
        }
        if verify {
            println!("{}", if failed { "verify: FAILED" } else { "verify: ok" });
        }
    }
    if failed {
        Err(Failed.into())
    } else {
        Ok(Outcome::Ok)
    }
}
