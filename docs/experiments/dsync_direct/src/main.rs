//! One writer's durable 16 KiB appends, several ways, in interleaved rounds (rotating order) over files
//! prepared alike (256 MiB, zero-filled with 64 KiB writes like Keel's spares, fsynced, 3 s settle):
//! - `raw`: page-aligned 16 384-byte `pwrite` + `fdatasync` (the raw loop of `keel bench journal`);
//! - `frame`: Keel's pattern today: 16 424-byte frames packed back to back, each write starting at its
//!   frame and padded with zeros to the end of its last page, then `fdatasync`;
//! - `frame-dsync`: the same write as one `pwritev2(RWF_DSYNC)`, no separate `fdatasync`;
//! - `direct`: the same frames through an `O_DIRECT` descriptor, each write widened to whole pages (the
//!   page holding the previous frame's tail is written again from a copy), then `fdatasync`;
//! - `direct-dsync`: `direct` with `RWF_DSYNC` instead of the `fdatasync`;
//! - `frame-aligned`: each frame starting on a page, padded to five whole pages, then `fdatasync`;
//! - `raw5`: the very same write as `frame-aligned` in a lane of its own: the spread between the two is
//!   the noise of one comparison;
//! - `direct-raw`: `raw` through `O_DIRECT`;
//! - `direct-sector`: `direct` widened to 512-byte sectors instead of pages.
//!
//! Usage: `cargo run --release -- DIR ROUNDS [PER_ROUND]`: raw, frame, frame-dsync, direct, direct-dsync;
//! with `WAYS=b`: raw, frame, frame-aligned, raw5; with `WAYS=c`: raw, frame, direct-raw, direct-sector,
//! direct. Ratios are to `raw`, the first way, round by round.

use std::alloc::{alloc_zeroed, Layout};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Instant;

const FILE_BYTES: u64 = 256 << 20;
const PAGE: usize = 4096;
const RECORD: usize = 16384;
const FRAME: usize = RECORD + 40;

#[derive(Clone, Copy, Debug)]
enum Way {
    Raw,
    Frame,
    FrameDsync,
    Direct,
    DirectDsync,
    FrameAligned,
    Raw5,
    DirectRaw,
    DirectSector,
}

struct Lane {
    way: Way,
    file: File,
    at: u64,
    rates: Vec<f64>,
    cpu_ns: u64,
    lat: Vec<u32>,
    /// `O_DIRECT` ways: an aligned image of the pages (or sectors) one write covers; its head holds the
    /// previous frame's tail between writes.
    image: &'static mut [u8],
}

fn prepared(path: &str, direct: bool) -> File {
    {
        let f = OpenOptions::new().create(true).write(true).truncate(true).open(path).expect("create");
        let zeros = vec![0u8; 64 << 10];
        for i in 0..FILE_BYTES / zeros.len() as u64 {
            f.write_all_at(&zeros, i * zeros.len() as u64).expect("zero-fill");
        }
        f.sync_all().expect("fsync");
    }
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path).expect("open")
}

fn pwritev2(file: &File, buf: &[u8], at: u64, flags: i32) {
    let iov = libc::iovec { iov_base: buf.as_ptr() as *mut _, iov_len: buf.len() };
    // SAFETY: one iovec over a live slice.
    let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, at as i64, flags) };
    assert_eq!(n, buf.len() as isize, "pwritev2: {}", std::io::Error::last_os_error());
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("DIR");
    let rounds: usize = args.next().expect("ROUNDS").parse().expect("a number");
    let per_round: usize = args.next().map(|s| s.parse().expect("a number")).unwrap_or(1500);
    let ways: Vec<Way> = match std::env::var("WAYS").as_deref() {
        Ok("c") => vec![Way::Raw, Way::Frame, Way::DirectRaw, Way::DirectSector, Way::Direct],
        Ok("b") => vec![Way::Raw, Way::Frame, Way::FrameAligned, Way::Raw5],
        _ => vec![Way::Raw, Way::Frame, Way::FrameDsync, Way::Direct, Way::DirectDsync],
    };
    let mut lanes: Vec<Lane> = ways
        .iter()
        .map(|&way| Lane {
            way,
            file: prepared(
                &format!("{dir}/{way:?}.dat"),
                matches!(way, Way::Direct | Way::DirectDsync | Way::DirectRaw | Way::DirectSector),
            ),
            at: 0,
            rates: vec![],
            cpu_ns: 0,
            image: aligned_image(),
            lat: vec![],
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut frame = vec![0u8; 6 * PAGE];
    for (i, b) in frame.iter_mut().enumerate().take(FRAME) {
        *b = (i * 7 + 1) as u8;
    }
    let raw = vec![7u8; RECORD];
    for round in 0..rounds {
        let n = lanes.len();
        for k in 0..n {
            let lane = &mut lanes[(round + k) % n];
            if lane.at + (per_round * PAGE * 6) as u64 > FILE_BYTES {
                lane.at = 0;
            }
            let started = Instant::now();
            let cpu0 = thread_cpu_ns();
            for _ in 0..per_round {
                let t = Instant::now();
                match lane.way {
                    Way::Raw => {
                        lane.file.write_all_at(&raw, lane.at).unwrap();
                        lane.file.sync_data().unwrap();
                        lane.at += RECORD as u64;
                    }
                    Way::DirectRaw => {
                        lane.file.write_all_at(&lane.image[..RECORD], lane.at).unwrap();
                        lane.file.sync_data().unwrap();
                        lane.at += RECORD as u64;
                    }
                    Way::FrameAligned | Way::Raw5 => {
                        lane.file.write_all_at(&frame[..5 * PAGE], lane.at).unwrap();
                        lane.file.sync_data().unwrap();
                        lane.at += 5 * PAGE as u64;
                    }
                    Way::Frame | Way::FrameDsync => {
                        let end = (lane.at as usize + FRAME).div_ceil(PAGE) * PAGE;
                        let len = end - lane.at as usize;
                        if let Way::Frame = lane.way {
                            lane.file.write_all_at(&frame[..len], lane.at).unwrap();
                            lane.file.sync_data().unwrap();
                        } else {
                            pwritev2(&lane.file, &frame[..len], lane.at, libc::RWF_DSYNC);
                        }
                        lane.at += FRAME as u64;
                    }
                    Way::Direct | Way::DirectDsync | Way::DirectSector => {
                        let unit = if let Way::DirectSector = lane.way { 512 } else { PAGE };
                        let start = lane.at as usize / unit * unit;
                        let head = lane.at as usize - start;
                        let end = (lane.at as usize + FRAME).div_ceil(unit) * unit;
                        let image = &mut *lane.image;
                        // image[..head] already holds the previous frame's tail (kept below).
                        image[head..head + FRAME].copy_from_slice(&frame[..FRAME]);
                        image[head + FRAME..end - start].fill(0);
                        if let Way::DirectDsync = lane.way {
                            pwritev2(&lane.file, &image[..end - start], start as u64, libc::RWF_DSYNC);
                        } else {
                            lane.file.write_all_at(&image[..end - start], start as u64).unwrap();
                            lane.file.sync_data().unwrap();
                        }
                        lane.at += FRAME as u64;
                        let new_start = lane.at as usize / unit * unit;
                        let keep = lane.at as usize - new_start;
                        image.copy_within(new_start - start..new_start - start + keep, 0);
                    }
                }
                lane.lat.push(t.elapsed().as_micros() as u32);
            }
            lane.rates.push(per_round as f64 / started.elapsed().as_secs_f64());
            lane.cpu_ns += thread_cpu_ns() - cpu0;
        }
        let line: Vec<String> = lanes.iter().map(|l| format!("{:?} {:.0}", l.way, l.rates[round])).collect();
        println!("round {round}: {}", line.join(", "));
    }
    let raw_rates = lanes[0].rates.clone();
    for lane in &mut lanes {
        let mut ratios: Vec<f64> = lane.rates.iter().zip(&raw_rates).map(|(a, b)| a / b).collect();
        ratios.sort_by(f64::total_cmp);
        lane.lat.sort();
        let total: f64 = lane.rates.iter().sum::<f64>() / lane.rates.len() as f64;
        println!(
            "{:12} mean {:6.0}/s  median ratio to raw {:.3}  p50 {} us  p99 {} us  cpu {:.1} us/append",
            format!("{:?}", lane.way),
            total,
            ratios[ratios.len() / 2],
            lane.lat[lane.lat.len() / 2],
            lane.lat[lane.lat.len() * 99 / 100],
            lane.cpu_ns as f64 / 1e3 / lane.lat.len() as f64
        );
    }
}

/// A page-aligned, zeroed buffer of six pages (a frame's widest write), for `O_DIRECT`.
fn aligned_image() -> &'static mut [u8] {
    let layout = Layout::from_size_align(6 * PAGE, PAGE).unwrap();
    // SAFETY: the layout's size is non-zero, the allocation is checked, and it is never freed (the process
    // ends), so a `'static` slice over it stays valid.
    unsafe {
        let p = alloc_zeroed(layout);
        assert!(!p.is_null(), "allocation");
        std::slice::from_raw_parts_mut(p, 6 * PAGE)
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
