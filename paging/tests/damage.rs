//! Bad input: damaged, missing, truncated and foreign page files give an error naming the address and the
//! page; the other addresses keep working; a torn tail of the newest page is cut off and nothing answered
//! is lost.

mod common;

use std::path::{Path, PathBuf};

use keel_paging::{Paging, PagingError};

/// Two addresses, "bad" and "good", each with a subscription and several pages.
fn setup(dir: &Path) -> Vec<PathBuf> {
    let (paging, _) = common::open(dir, common::always_paged());
    for name in ["bad", "good"] {
        let a = paging.address(name).unwrap();
        a.subscribe("s").unwrap();
        for i in 0..200u32 {
            a.send(&vec![i as u8; 1000], None).unwrap();
        }
    }
    let mut pages: Vec<PathBuf> =
        std::fs::read_dir(dir.join("pages/a-00000000")).unwrap().map(|e| e.unwrap().path()).collect();
    pages.sort();
    assert!(pages.len() >= 3);
    pages
}

fn good_still_works(paging: &Paging) {
    let good = paging.address("good").unwrap();
    let s = good.subscription("s").unwrap();
    assert_eq!(s.pending().messages, 200);
    let mut n = 0;
    while let Some(d) = s.receive().unwrap() {
        s.ack(d.seq).unwrap();
        n += 1;
    }
    assert_eq!(n, 200);
    good.send(b"more", None).unwrap();
}

fn failed(paging: &Paging) -> String {
    let e = paging.address("bad").unwrap_err();
    assert!(matches!(e, PagingError::AddressFailed { .. }), "{e}");
    e.to_string()
}

#[test]
fn a_flipped_byte_in_a_sealed_page_names_address_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let pages = setup(dir.path());
    let mut b = std::fs::read(&pages[1]).unwrap();
    b[5000] ^= 0x10;
    std::fs::write(&pages[1], &b).unwrap();
    let (paging, _) = common::open(dir.path(), common::always_paged());
    let e = failed(&paging);
    assert!(e.contains("\"bad\"") && e.contains(pages[1].file_name().unwrap().to_str().unwrap()), "{e}");
    assert!(e.contains("checksum"), "{e}");
    good_still_works(&paging);
}

#[test]
fn a_missing_page_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let pages = setup(dir.path());
    std::fs::remove_file(&pages[1]).unwrap();
    let (paging, _) = common::open(dir.path(), common::always_paged());
    let e = failed(&paging);
    assert!(e.contains("page 2 is missing") && e.contains("\"bad\""), "{e}");
    good_still_works(&paging);
}

#[test]
fn a_truncated_header_and_a_foreign_page_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pages = setup(dir.path());
    let keep = std::fs::read(&pages[0]).unwrap();
    std::fs::write(&pages[0], &keep[..100]).unwrap();
    let (paging, _) = common::open(dir.path(), common::always_paged());
    let e = failed(&paging);
    assert!(e.contains("shorter than the page header"), "{e}");
    drop(paging);

    // The good address's first page copied over the bad one's.
    let good_first = dir.path().join("pages/a-00000001").join(pages[0].file_name().unwrap());
    std::fs::copy(good_first, &pages[0]).unwrap();
    let (paging, _) = common::open(dir.path(), common::always_paged());
    let e = failed(&paging);
    assert!(e.contains("another address"), "{e}");
    good_still_works(&paging);
}

#[test]
fn damage_found_while_reading_names_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let (paging, _) = common::open(dir.path(), common::always_paged());
    let a = paging.address("bad").unwrap();
    let s = a.subscribe("s").unwrap();
    for i in 0..200u32 {
        a.send(&vec![i as u8; 1000], None).unwrap();
    }
    // Damage a sealed page under the running store.
    let page = dir.path().join("pages/a-00000000/00000000000000000002.kpage");
    let mut b = std::fs::read(&page).unwrap();
    b[3000] ^= 1;
    std::fs::write(&page, &b).unwrap();
    let e = loop {
        match s.receive() {
            Ok(Some(d)) => s.ack(d.seq).unwrap(),
            Ok(None) => panic!("read past the damage"),
            Err(e) => break e.to_string(),
        }
    };
    assert!(e.contains("\"bad\"") && e.contains("00000000000000000002.kpage") && e.contains("checksum"), "{e}");
}

#[test]
fn a_torn_tail_of_the_newest_page_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let pages = setup(dir.path());
    let newest = pages.last().unwrap();
    // Half a frame at the end, as a write cut short would leave.
    let mut f = std::fs::OpenOptions::new().append(true).open(newest).unwrap();
    std::io::Write::write_all(&mut f, &[0xAB; 700]).unwrap();
    drop(f);
    let (paging, _) = common::open(dir.path(), common::always_paged());
    let a = paging.address("bad").unwrap();
    let s = a.subscription("s").unwrap();
    assert_eq!(s.pending().messages, 200, "nothing answered was lost");
    let Ok(keel_paging::Sent::Paged(seq)) = a.send(b"after", None) else { panic!() };
    assert_eq!(seq, 200);
    let mut n = 0;
    while let Some(d) = s.receive().unwrap() {
        assert_eq!(d.seq, n);
        n += 1;
    }
    assert_eq!(n, 201);
    good_still_works(&paging);
}

#[test]
fn a_tear_in_the_last_page_with_frames_followed_by_an_empty_page_recovers() {
    // A flush that crossed into a new page: the new page's header is durable, the old page's last write
    // was cut. The old page is the one torn; the empty page after it is recreated.
    let dir = tempfile::tempdir().unwrap();
    let pages = setup(dir.path());
    let n = pages.len();
    let (torn, empty) = (&pages[n - 2], &pages[n - 1]);
    let len = std::fs::metadata(torn).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(torn).unwrap();
    f.set_len(len - 500).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(empty).unwrap();
    f.set_len(128).unwrap();
    drop(f);
    let (paging, _) = common::open(dir.path(), common::always_paged());
    let a = paging.address("bad").unwrap();
    let s = a.subscription("s").unwrap();
    let kept = s.pending().messages;
    assert!(kept > 0 && kept < 200, "{kept}");
    let Ok(keel_paging::Sent::Paged(seq)) = a.send(b"after", None) else { panic!() };
    assert_eq!(seq, kept, "sequence numbers continue from the tear");
    let got: Vec<u64> = std::iter::from_fn(|| s.receive().unwrap().map(|d| d.seq)).collect();
    assert_eq!(got, (0..=kept).collect::<Vec<_>>());
    drop((s, a, paging));
    let (paging, _) = common::open(dir.path(), common::always_paged());
    assert_eq!(paging.address("bad").unwrap().subscription("s").unwrap().pending().messages, kept + 1);
    good_still_works(&paging);
}
