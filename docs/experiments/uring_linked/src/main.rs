//! One writer's durable appends, two ways, in interleaved rounds over two files prepared alike (512 MiB,
//! zero-filled with 64 KiB writes like Keel's spares, fsynced):
//! - `pwrite` + `fdatasync`: two syscalls per append, the raw loop of `keel bench journal`;
//! - io_uring: a write linked to an fdatasync (`IOSQE_IO_LINK`), submitted and waited for in one
//!   `io_uring_enter`.
//!
//! Usage: `cargo run --release -- DIR RECORD_BYTES ROUNDS`.

use io_uring::{opcode, squeue, types, IoUring};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Instant;

const FILE_BYTES: u64 = 512 << 20;
const PER_ROUND: usize = 1500;

fn prepared(path: &str) -> File {
    let f = OpenOptions::new().create(true).read(true).write(true).truncate(true).open(path).expect("create");
    let zeros = vec![0u8; 64 << 10];
    for i in 0..FILE_BYTES / zeros.len() as u64 {
        f.write_all_at(&zeros, i * zeros.len() as u64).expect("zero-fill");
    }
    f.sync_all().expect("fsync");
    f
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("DIR");
    let size: usize = args.next().expect("RECORD_BYTES").parse().expect("a number");
    let rounds: usize = args.next().expect("ROUNDS").parse().expect("a number");
    assert!((PER_ROUND * size) as u64 * rounds as u64 <= FILE_BYTES, "fits the files");
    let (plain, linked) = (prepared(&format!("{dir}/plain.dat")), prepared(&format!("{dir}/linked.dat")));
    let buf = vec![7u8; size];
    let mut ring = IoUring::new(8).expect("io_uring");
    let fd = types::Fd(linked.as_raw_fd());
    let (mut at_plain, mut at_linked) = (0u64, 0u64);
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let started = Instant::now();
        for _ in 0..PER_ROUND {
            plain.write_all_at(&buf, at_plain).expect("pwrite");
            plain.sync_data().expect("fdatasync");
            at_plain += size as u64;
        }
        let plain_rate = PER_ROUND as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        for _ in 0..PER_ROUND {
            let write = opcode::Write::new(fd, buf.as_ptr(), size as u32)
                .offset(at_linked)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(1);
            let sync = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build().user_data(2);
            // SAFETY: `buf` outlives the submission: we wait for both completions before it can change.
            unsafe {
                ring.submission().push(&write).expect("room for two");
                ring.submission().push(&sync).expect("room for two");
            }
            ring.submit_and_wait(2).expect("io_uring_enter");
            let results: Vec<i32> = ring.completion().map(|c| c.result()).collect();
            assert_eq!(results.len(), 2);
            assert!(results.iter().all(|r| *r >= 0), "{results:?}");
            at_linked += size as u64;
        }
        let linked_rate = PER_ROUND as f64 / started.elapsed().as_secs_f64();
        ratios.push(linked_rate / plain_rate);
        println!(
            "round {round}: pwrite+fdatasync {plain_rate:.0}/s, io_uring linked {linked_rate:.0}/s, ratio {:.3}",
            linked_rate / plain_rate
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!("median ratio {:.3}", ratios[ratios.len() / 2]);
}
